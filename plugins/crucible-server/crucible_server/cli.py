"""``crucible serve`` and ``crucible tokens create|list|revoke``.

``serve`` binds 127.0.0.1 by default. Any other address needs
``--allow-remote`` and at least one active token. On loopback with no
token created the API is open (every caller is tenant ``default`` with
every scope); as soon as one token exists, every request needs one.
SIGTERM/SIGINT stop accepting connections and drain the workers (see
:mod:`crucible_server.runner`).

``tokens create`` prints the token once; only its sha256 is stored
(``$CRUCIBLE_HOME/server_tokens.db``).
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from crucible_core.cli.output import print_json, print_table

__all__ = ["ServeCommand", "TokensCommand"]


class ServeCommand:
    """``crucible serve``."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = __doc__
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: free)")
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            metavar="N",
            help="worker processes run beside the API, one job each (default 1)",
        )
        parser.add_argument(
            "--allow-remote", action="store_true", help="allow a non-loopback --host"
        )
        parser.add_argument("--lease", type=float, default=30.0, metavar="S")
        parser.add_argument("--drain-timeout", type=float, default=30.0, metavar="S")
        parser.add_argument(
            "--max-body", type=int, default=1 << 20, metavar="BYTES", help="request body limit"
        )
        parser.add_argument(
            "--rate", type=float, default=200.0, metavar="R", help="requests/s per token"
        )
        parser.add_argument("--log-level", default="warning", help="uvicorn log level")

    def run(self, args: argparse.Namespace) -> int:
        from crucible_core._options import check_count, check_seconds
        from crucible_server.app import ServerSettings
        from crucible_server.runner import ApiServer, check_bind, is_loopback
        from crucible_server.tokens import TokenStore

        check_count("--workers", args.workers, minimum=0)
        check_count("--max-body", args.max_body)
        check_seconds("--lease", args.lease)
        check_seconds("--drain-timeout", args.drain_timeout, allow_zero=True)
        check_seconds("--rate", args.rate)
        if not 0 <= args.port <= 65535:
            from crucible_core.errors import ConfigError

            raise ConfigError(f"--port {args.port} is not a port", hint="0..65535")
        store = TokenStore()
        has_tokens = store.active()
        check_bind(args.host, allow_remote=args.allow_remote, has_tokens=has_tokens)
        server = ApiServer(
            tokens=store if has_tokens else None,
            settings=ServerSettings(
                max_body_bytes=args.max_body, rate_per_s=args.rate, rate_burst=int(args.rate * 2)
            ),
            host=args.host,
            port=args.port,
            worker_processes=args.workers,
            lease_s=args.lease,
            drain_timeout_s=args.drain_timeout,
            log_level=args.log_level,
            configure_logging=True,
        )

        def ready(srv: Any) -> None:
            mode = "tokens required" if has_tokens else "open (no token exists; loopback only)"
            pids = ", ".join(str(p) for p in (srv.group.pids if srv.group else []))
            sys.stderr.write(
                f"crucible serve: {srv.url} ({mode}), {args.workers} worker process(es)"
                f" [pids {pids or '-'}], database {srv.scheduler.path}\n"
            )
            sys.stderr.flush()

        assert is_loopback(args.host) or has_tokens
        # uvicorn handles SIGTERM/SIGINT while it serves, then re-raises the signal
        # under the handler that was in place before: make that one ours, so the
        # re-raised signal drains the worker instead of killing the process.
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        for signum in previous:
            signal.signal(signum, lambda *_: server.stop_worker())
        try:
            server.serve_forever(ready)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            server.scheduler.close()
            store.close()
        sys.stderr.write("crucible serve: stopped\n")
        return 0


class TokensCommand:
    """``crucible tokens create|list|revoke``."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = "API tokens for crucible serve: scoped, bound to a tenant, hashed."
        sub = parser.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
        p = sub.add_parser("create", help="make a token (printed once, never stored in clear)")
        p.add_argument("--tenant", required=True)
        p.add_argument(
            "--scopes",
            required=True,
            help="comma separated: jobs:read, jobs:write, artifacts:read, admin",
        )
        p.add_argument("--expires", metavar="DURATION", help="e.g. 30d, 12h (default: never)")
        p.add_argument("--name", default="", help="a label for `tokens list`")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("list", help="every token (ids, tenants, scopes; never secrets)")
        p.add_argument("--json", action="store_true")
        p = sub.add_parser("revoke", help="revoke a token by id")
        p.add_argument("id")
        p.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from crucible_server.tokens import TokenStore, parse_duration

        store = TokenStore()
        try:
            if args.tokens_command == "create":
                expires = parse_duration(args.expires) if args.expires else None
                token, info = store.create(
                    args.tenant, args.scopes.split(","), expires_in_s=expires, name=args.name
                )
                if args.json:
                    print_json({"token": token, **info.to_dict()})
                else:
                    sys.stdout.write(f"{token}\n")
                    sys.stderr.write(
                        f"token {info.id} for tenant {info.tenant_id} "
                        f"({', '.join(sorted(info.scopes))}): shown once, store it now\n"
                    )
            elif args.tokens_command == "list":
                infos = store.list()
                if args.json:
                    print_json([i.to_dict() for i in infos])
                else:
                    print_table(
                        ["id", "tenant", "scopes", "name", "state"],
                        [
                            [
                                i.id,
                                i.tenant_id,
                                ",".join(sorted(i.scopes)),
                                i.name,
                                "revoked" if i.revoked_at else "active",
                            ]
                            for i in infos
                        ],
                    )
            else:
                info = store.revoke(args.id)
                if args.json:
                    print_json(info.to_dict())
                else:
                    sys.stdout.write(f"revoked {info.id}\n")
        finally:
            store.close()
        return 0
