"""``crucible ask PROMPT``: one answer from a backend, an ensemble, or a hedged backend.

Composition is by backend name through the plugin host (``ensemble`` from
crucible-ensemble, ``hedged`` from crucible-hedging), so core imports neither
plugin: ``--ensemble`` or ``--hedge`` without the plugin installed is a clear
"not found" naming what to install.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, cast

import msgspec

from crucible_core.cli.output import print_json
from crucible_core.errors import ConfigError, NotFound
from crucible_core.ir.backend import Prompt, SamplingParams

__all__ = ["command", "parse_option", "parse_spec"]

#: The option a ``--hedge POLICY:VALUE`` value sets, per built-in policy.
_HEDGE_VALUE = {
    "fixed": "delay_ms",
    "percentile": "p",
    "backoff": "base_ms",
    "deadline": "deadline_ms",
}


def parse_spec(flag: str, text: str) -> tuple[str, str | None]:
    """``NAME[:VALUE]`` -> (name, value); an empty name is a usage error naming the flag."""
    name, sep, value = text.partition(":")
    if not name or (sep and not value):
        raise ConfigError(f"{flag}: expected NAME or NAME:VALUE, got {text!r}")
    return name, value if sep else None


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, booleans), else text."""
    key, sep, raw = text.partition("=")
    if not key or not sep:
        raise ConfigError(f"--option: expected KEY=VALUE, got {text!r}")
    try:
        return key, msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return key, raw


def _number(flag: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{flag}: {value!r} is not a number") from None
    return number


class _AskCommand:
    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Ask a backend one question. --ensemble votes over N copies of it, --hedge sends "
            "a backup request when it is slow; both compose (hedged members of an ensemble). "
            "Streams the answer when one backend answers and the backend streams."
        )
        parser.add_argument("prompt", help="the question or text to continue")
        parser.add_argument("--backend", default="local", help="backend name (default: local)")
        parser.add_argument(
            "--option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a backend option (repeatable), e.g. --option base_url=http://127.0.0.1:8000",
        )
        parser.add_argument(
            "--fallback",
            action="append",
            default=[],
            metavar="NAME",
            help="a backend to fail over to (repeatable, in order; per call with crucible-router)",
        )
        parser.add_argument("--model", metavar="RUN", help="sample from a training run's weights")
        parser.add_argument(
            "--ensemble",
            metavar="STRATEGY[:N]",
            help="vote over N members (default 3): majority, weighted, best_confidence, "
            "unanimous, ranked_choice, semantic_similarity",
        )
        parser.add_argument(
            "--hedge",
            metavar="POLICY[:VALUE]",
            help="hedge each call: fixed:MS, percentile:P, adaptive, backoff:MS, deadline:MS",
        )
        parser.add_argument("--budget", type=float, default=0.05, help="hedging budget (0-1)")
        parser.add_argument("--chat", action="store_true", help="send the prompt as a user message")
        parser.add_argument("--max-tokens", type=int, default=64)
        parser.add_argument("--temperature", type=float, default=0.7)
        parser.add_argument("--seed", type=int, help="seed (ensemble member i uses seed + i)")
        parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
        parser.add_argument("--json", action="store_true", help="print the answer as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from crucible_core.plugins import get_host

        host = get_host()
        from crucible_core.cli.sample_cmd import request_of

        params, prompt = request_of(args)
        options = dict(parse_option(o) for o in cast(list[str], args.option))
        make = self._base(args, options, host)
        if args.hedge:
            make = self._hedged(args, make, host)
        if args.ensemble:
            strategy, count = parse_spec("--ensemble", cast(str, args.ensemble))
            n = 3 if count is None else int(_number("--ensemble", count))
            if n < 2:
                raise ConfigError(f"--ensemble: an ensemble needs at least 2 members, got {n}")
            members = [make() for _ in range(n)]
            ensemble = _create(
                host, "ensemble", "crucible-ensemble", members=members, strategy=strategy
            )
            try:
                result = ensemble.run(prompt, params)
            finally:
                ensemble.close()
            if args.json:
                print_json(msgspec.to_builtins(result))
            else:
                sys.stdout.write(result.text + "\n")
                sys.stderr.write(
                    f"{result.strategy}: agreement {result.agreement:.0%} over "
                    f"{len(result.outcomes)} members"
                    + (f"; failed: {', '.join(result.failed)}" if result.failed else "")
                    + "\n"
                )
            return 0
        backend = make()
        try:
            return self._answer(backend, prompt, params, as_json=bool(args.json))
        finally:
            close = getattr(backend, "close", None)
            if callable(close):
                close()

    @staticmethod
    def _base(args: argparse.Namespace, options: dict[str, Any], host: Any) -> Callable[[], Any]:
        from crucible_core.cli.sample_cmd import backend_from_ref
        from crucible_core.ir.common import BackendRef

        fallbacks = cast(list[str], args.fallback)
        if args.model:
            from crucible_core.cli.sample_cmd import resolve_sampler

            ref, model, checkpoint = resolve_sampler(cast(str, args.model))
            run_ref = BackendRef(
                name=ref.name,
                options={**ref.options, **options},
                fallbacks=[*ref.fallbacks, *fallbacks],
            )
            return lambda: backend_from_ref(host, run_ref).load_sampler(model, checkpoint)
        name = cast(str, args.backend)
        if not fallbacks:
            host.get("backend", name)  # unknown names fail here, with a did-you-mean
        ref = BackendRef(name=name, options=options, fallbacks=fallbacks)
        return lambda: backend_from_ref(host, ref)

    @staticmethod
    def _hedged(args: argparse.Namespace, make: Callable[[], Any], host: Any) -> Callable[[], Any]:
        policy, value = parse_spec("--hedge", cast(str, args.hedge))
        policy_options: dict[str, Any] = {}
        if value is not None:
            key = _HEDGE_VALUE.get(policy)
            if key is None:
                raise ConfigError(
                    f"--hedge: policy {policy!r} takes no value, got {value!r}",
                    hint="values: " + ", ".join(f"{p}:{k}" for p, k in _HEDGE_VALUE.items()),
                )
            policy_options[key] = _number("--hedge", value)
        options = {"policy": policy, "policy_options": policy_options, "budget": args.budget}
        return lambda: _create(host, "hedged", "crucible-hedging", backend=make(), **options)

    @staticmethod
    def _answer(backend: Any, prompt: Prompt, params: SamplingParams, *, as_json: bool) -> int:
        if callable(getattr(backend, "sample", None)) and not callable(
            getattr(backend, "complete", None)
        ):  # a run's sampler
            completion = backend.sample(prompt, params).result(timeout=600)[0]
        elif not as_json and backend.capabilities().supports_streaming:
            for chunk in backend.stream(prompt, params):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return 0
        else:
            completion = backend.complete(prompt, params)
        if as_json:
            print_json(msgspec.to_builtins(completion))
        else:
            sys.stdout.write(completion.text + "\n")
        return 0


def _create(host: Any, name: str, distribution: str, **options: Any) -> Any:
    try:
        host.get("backend", name)
    except NotFound:
        raise NotFound(
            f"the {name!r} backend is not installed",
            hint=f"pip install {distribution}",
        ) from None
    return host.create("backend", name, **options)


command = _AskCommand()
