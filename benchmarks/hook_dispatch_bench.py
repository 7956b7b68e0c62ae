"""Hook dispatch: one registry build over 20 plugins (from scratch: every registration
hook of every plugin is called, so a plugin's registrations are all-or-nothing).

Target (issue 3): <= 2 us per plugin. Baseline in the same run: calling the 20
hook functions directly, without pluggy or the host.
Run: .venv/bin/python -m benchmarks.hook_dispatch_bench
"""

from __future__ import annotations

import types
from typing import Any

from benchmarks._util import per_call
from crucible_core import hookimpl
from crucible_core.plugins import PluginHost

N = 20


def make_plugin(i: int) -> Any:
    def register_backends(register: Any) -> None:
        register(f"backend-{i}", "pkg.mod:Backend", summary="a backend")

    return types.SimpleNamespace(register_backends=hookimpl(register_backends))


def main() -> None:
    host = PluginHost(autoload=False, builtins=False)
    plugins = [make_plugin(i) for i in range(N)]
    for i, p in enumerate(plugins):
        host.add_plugin(p, name=f"p{i}")

    def round_trip() -> None:
        host._invalidate()  # pyright: ignore[reportPrivateUsage] - force a fresh round
        assert len(host.registrations("backend")) == N

    sink: list[Any] = []
    direct = [p.register_backends for p in plugins]

    def baseline() -> None:
        sink.clear()
        for fn in direct:
            fn(lambda *a, **k: sink.append(a))  # pyright: ignore[reportUnknownLambdaType]

    t_host = per_call(round_trip, number=2000)
    t_base = per_call(baseline, number=2000)
    print(f"register_backends round over {N} plugins:")
    print(f"  through the host: {t_host * 1e6:8.2f} us  ({t_host * 1e6 / N:.2f} us per plugin)")
    print(f"  direct calls:     {t_base * 1e6:8.2f} us  ({t_base * 1e6 / N:.2f} us per plugin)")
    print(f"  ratio host / direct: {t_host / t_base:.1f}x")
    print(f"target <= 2 us per plugin: {'met' if t_host / N <= 2e-6 else 'NOT met'}")


if __name__ == "__main__":
    main()
