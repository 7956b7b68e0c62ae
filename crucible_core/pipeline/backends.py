"""A backend from a :class:`~crucible_core.ir.common.BackendRef`, honouring its fallbacks.

One rule for every caller (a run's scope, ``crucible sample``, ``ask``,
``export``, the harness's ``eval``), so a ``[backend]`` table means the same
thing wherever it is read:

- With ``fallbacks`` (or the name ``routed``) and crucible-router installed:
  the ``routed`` backend, so inference calls fail over per call (circuit
  breakers, retryable errors), not only when the backend is created.
- Otherwise: the first of ``name`` and ``fallbacks`` that can be created
  (``options`` go to ``name`` only); when none can, one
  :class:`~crucible_core.errors.BackendError` listing why each failed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from crucible_core.errors import BackendError, NotFound, PluginError
from crucible_core.ir.common import BackendRef

__all__ = ["create_backend"]


def create_backend(
    host: Any,
    ref: BackendRef,
    *,
    routed_options: Mapping[str, Any] | None = None,
    on_fallback: Callable[[str, list[str]], None] | None = None,
    owner: str = "",
) -> Any:
    """The backend ``ref`` names, created through ``host`` (a plugin host).

    ``routed_options`` are extra options for the ``routed`` backend (a run
    passes its event bus so fail-overs reach its telemetry); ``on_fallback``
    is called with the backend chosen and the reasons the earlier candidates
    failed when it is not ``ref.name``; ``owner`` names what the backend is for
    in the error (e.g. ``"of experiment 'x'"``).
    """
    if (ref.fallbacks or ref.name == "routed") and "routed" in host.registrations("backend"):
        options: dict[str, Any] = dict(ref.options)
        if ref.name != "routed":
            options = {"primary": {"name": ref.name, "options": options}}
        if ref.fallbacks:
            options["fallbacks"] = [*options.get("fallbacks", ()), *ref.fallbacks]
        options.update(routed_options or {})
        return host.create("backend", "routed", **options)
    if not ref.fallbacks:
        return host.create("backend", ref.name, **ref.options)
    tried: list[str] = []
    for candidate in [ref.name, *ref.fallbacks]:
        try:
            backend = host.create(
                "backend", candidate, **(ref.options if candidate == ref.name else {})
            )
        except (NotFound, PluginError, BackendError) as exc:
            tried.append(f"{candidate} ({exc.message})")
            continue
        if tried and on_fallback is not None:
            on_fallback(candidate, tried)
        return backend
    raise BackendError(
        f"no backend {owner + ' ' if owner else ''}could be created: " + "; ".join(tried),
        hint="install the backend's plugin, or list working fallbacks in [backend].fallbacks",
    )
