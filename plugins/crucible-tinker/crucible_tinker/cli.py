"""``crucible serve-tinker``: a Tinker-compatible HTTP endpoint over a crucible backend.

::

    crucible serve-tinker --backend local --port 8000 --api-key-file ~/.config/crucible/server-keys

Then, with the unmodified SDK (the key in the environment, not on a command line)::

    export TINKER_BASE_URL=http://127.0.0.1:8000 TINKER_API_KEY=tml-...
    python my_tinker_script.py

API keys come from ``--api-key-file`` (one key per line, mode 0600),
``$CRUCIBLE_TINKER_SERVER_API_KEYS`` (comma-separated) or ``--api-key``
(repeatable; discouraged: any user of the machine sees a command line in
``ps``, so it prints a warning); with none given, one is generated and
printed once on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from crucible_core.errors import ConfigError
from crucible_tinker.server.config import FaultConfig

__all__ = ["command", "fault_config", "server_keys"]

KEYS_ENV = "CRUCIBLE_TINKER_SERVER_API_KEYS"


def server_keys(args: argparse.Namespace) -> tuple[list[str], bool]:
    """The keys the server accepts, and whether they were generated here."""
    keys: list[str] = list(args.api_key or [])
    if args.api_key_file:
        from crucible_tinker.credentials import read_private_file

        # The mode is checked first; the file holds one key a line.
        text = read_private_file(args.api_key_file)
        keys.extend(k.strip() for k in text.replace(",", "\n").splitlines() if k.strip())
    env = os.environ.get(KEYS_ENV)
    if env:
        keys.extend(k.strip() for k in env.split(",") if k.strip())
    bad = [k for k in keys if not k.startswith("tml-")]
    if bad:
        raise ConfigError(
            f"{len(bad)} server API key(s) do not start with 'tml-'",
            hint="the tinker SDK refuses to send keys without the 'tml-' prefix",
        )
    if keys:
        return keys, False
    from crucible_tinker.server.runner import generate_api_key

    return [generate_api_key()], True


def fault_config(args: argparse.Namespace) -> FaultConfig:
    """The ``--inject-*`` flags as a FaultConfig (ConfigError for values out of range)."""
    paths = getattr(args, "inject_paths", None)
    try:
        return FaultConfig(
            seed=args.inject_seed,
            latency_s=args.inject_latency_ms / 1000,
            delay_fraction=args.inject_delay_rate,
            delay_s=args.inject_delay_ms / 1000,
            error_fraction=args.inject_error_rate,
            drop_fraction=args.inject_drop_rate,
            drop_after_fraction=args.inject_drop_after_rate,
            paths=frozenset(p.strip() for p in paths.split(",") if p.strip()) if paths else None,
        )
    except ValueError as exc:
        raise ConfigError(f"fault injection: {exc}") from None


def _options(raw: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in raw or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--backend-option takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


class _ServeTinkerCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--backend", default="local", help="registered crucible backend (default: local)"
        )
        parser.add_argument(
            "--backend-option",
            action="append",
            metavar="KEY=VALUE",
            help="option passed to the backend factory (VALUE parsed as JSON when it can be)",
        )
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
        parser.add_argument("--port", type=int, default=8000, help="port (8000; 0 = any free)")
        parser.add_argument(
            "--api-key-file",
            type=Path,
            help=f"file of accepted keys, one a line (mode 0600); or set ${KEYS_ENV}",
        )
        parser.add_argument(
            "--api-key",
            action="append",
            metavar="KEY",
            help="accepted API key (repeatable; visible to other users in `ps`: prefer "
            "--api-key-file)",
        )
        parser.add_argument(
            "--state-dir", type=Path, help="keep the checkpoint index here across restarts"
        )
        parser.add_argument(
            "--long-poll", type=float, default=10.0, help="seconds a result poll is held (10)"
        )
        parser.add_argument(
            "--chunk-len",
            type=int,
            default=1024,
            help="datums per forward_backward request the SDK sends (1024)",
        )
        parser.add_argument(
            "--compress", action="store_true", help="ask the SDK to zstd-compress fwd/bwd bodies"
        )
        parser.add_argument(
            "--max-body-bytes",
            type=int,
            metavar="N",
            help="largest request body accepted, 413 beyond (default: the largest "
            "forward_backward chunk the SDK sends)",
        )
        parser.add_argument("--log-level", default="warning", help="uvicorn log level")
        faults = parser.add_argument_group(
            "fault injection (testing clients against a slow or flaky server; seeded)"
        )
        faults.add_argument("--inject-latency-ms", type=float, default=0.0, metavar="MS")
        faults.add_argument("--inject-delay-rate", type=float, default=0.0, metavar="P")
        faults.add_argument("--inject-delay-ms", type=float, default=0.0, metavar="MS")
        faults.add_argument("--inject-error-rate", type=float, default=0.0, metavar="P")
        faults.add_argument("--inject-drop-rate", type=float, default=0.0, metavar="P")
        faults.add_argument("--inject-drop-after-rate", type=float, default=0.0, metavar="P")
        faults.add_argument("--inject-seed", type=int, default=0)
        faults.add_argument(
            "--inject-paths", metavar="A,B", help="only these endpoints (e.g. optim_step)"
        )

    def run(self, args: argparse.Namespace) -> int:
        from crucible_tinker.server.runner import TinkerServer

        keys, generated = server_keys(args)
        faults = fault_config(args)
        if args.api_key:
            sys.stderr.write(
                "warning: --api-key puts the key on the command line, where other users of "
                f"this machine see it (ps); use --api-key-file or ${KEYS_ENV}\n"
            )
        if args.max_body_bytes is not None and args.max_body_bytes < 1024:
            raise ConfigError(
                f"--max-body-bytes {args.max_body_bytes} is too small",
                hint="give at least 1024 (the SDK's own requests need that)",
            )
        server = TinkerServer(
            args.backend,
            backend_options=_options(args.backend_option),
            host=args.host,
            port=args.port,
            api_keys=keys,
            state_dir=args.state_dir,
            log_level=args.log_level,
            configure_logging=True,
            long_poll_s=args.long_poll,
            fwdbwd_max_chunk_len=args.chunk_len,
            proto_compress_fwdbwd=args.compress,
            max_body_bytes=args.max_body_bytes,
            faults=faults,
        )

        def announce(s: TinkerServer) -> None:
            sys.stderr.write(
                f"serving the Tinker API for backend {args.backend!r} on {s.url} "
                "(set TINKER_BASE_URL to it)\n"
            )
            if faults.active:
                sys.stderr.write(f"warning: injecting faults: {faults}\n")
            if generated:
                # Printed once, to the terminal that started the server (like a notebook token).
                sys.stderr.write(f"generated API key (set TINKER_API_KEY to it): {keys[0]}\n")
            sys.stderr.flush()

        server.serve_forever(ready=announce)
        return 0


command = _ServeTinkerCommand()
