"""Ensembles: accuracy vs members against the binomial formula, calls saved by early stop,
and the ensemble's own overhead per request.

Targets (issue 17): accuracy within the confidence interval of the binomial formula;
>= 25 % fewer member calls at 5 members with early stop and no change of answer;
overhead per request vs calling one member <= 0.2 ms.

Members are simulated, each right with a known probability, independently (a seeded
RNG per member), on yes/no questions, so majority accuracy with m members is
P(Binomial(m, p) > m / 2) exactly. The same members, answering instantly, give the
overhead: the ensemble's time per request minus one member's own call.
Run: .venv/bin/python -m benchmarks.ensemble_bench [--questions 2000] [--p 0.7]
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Iterator, Mapping

from crucible_ensemble import EnsembleBackend, Majority

from crucible_core.ir import Capabilities, Completion, Health, Prompt, SamplingParams, StreamChunk


class Biased:
    """Answers the question in the prompt ("yes" is right) correctly with probability ``p``."""

    def __init__(self, name: str, p: float, seed: int) -> None:
        self.name, self.p, self.rng = name, p, random.Random(seed)
        self.calls = 0

    def complete(self, prompt: Prompt, params: SamplingParams) -> Completion:
        self.calls += 1
        right = self.rng.random() < self.p
        return Completion(text="yes" if right else "no", tokens=[1], backend_id=self.name)

    def capabilities(self) -> Capabilities:
        return Capabilities(backend_id=self.name)

    def stream(self, prompt: Prompt, params: SamplingParams) -> Iterator[StreamChunk]:
        yield StreamChunk(text="yes", finish_reason="stop")

    def health_check(self) -> Health:
        return Health(ok=True)

    def metrics(self) -> Mapping[str, float]:
        return {}

    def close(self) -> None:
        pass


def binomial_majority(m: int, p: float) -> float:
    return sum(math.comb(m, k) * p**k * (1 - p) ** (m - k) for k in range(m // 2 + 1, m + 1))


def early_stop_section(prompt: Prompt, params: SamplingParams, n: int, p: float) -> None:
    """Member calls with and without early stop, on the same members' answers."""
    print(f"\nearly stop at 5 members right with p = {p} (sequential; same answers both runs)")
    members = [Biased(f"m{i}", p, seed=7 + i) for i in range(5)]
    twins = [Biased(f"m{i}", p, seed=7 + i) for i in range(5)]
    early = EnsembleBackend(members, Majority(), mode="sequential", early_stop=True)
    full = EnsembleBackend(twins, Majority(), mode="sequential", early_stop=False)
    same = 0
    for _ in range(n):
        a = early.run(prompt, params)
        b = full.run(prompt, params)
        # Members early stop did not ask skip the draw their twins made, so both runs
        # see the same answer from every member that was asked.
        for mem, twin in zip(members, twins, strict=True):
            while mem.calls < twin.calls:
                mem.rng.random()
                mem.calls += 1
        same += a.answer == b.answer
    early_calls = early.metrics()["member_calls"]
    full_calls = full.metrics()["member_calls"]
    saved = 1 - early_calls / full_calls
    # Stopping is optimal for majority: it stops exactly when the pending votes cannot
    # change the outcome, so this is the most a correct early stop can save here.
    print(
        f"member calls: {early_calls:.0f} with early stop vs {full_calls:.0f} without "
        f"({saved:.1%} fewer); same answer on {same}/{n} questions"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--questions", type=int, default=2000)
    ap.add_argument("--p", type=float, default=0.7)
    ap.add_argument("--overhead-requests", type=int, default=2000)
    args = ap.parse_args()
    prompt, params = Prompt(text="Is it true?"), SamplingParams(max_tokens=1, temperature=0.0)
    n = args.questions

    print(f"accuracy of majority voting, members right with p = {args.p}, {n} questions")
    print(f"{'members':>7} {'measured':>9} {'binomial':>9} {'95% CI':>17}  inside")
    for m in (1, 3, 5, 7, 9):
        members = [Biased(f"m{i}", args.p, seed=100 * m + i) for i in range(m)]
        if m == 1:
            right = sum(members[0].complete(prompt, params).text == "yes" for _ in range(n))
        else:
            ens = EnsembleBackend(members, Majority(), mode="sequential", early_stop=False)
            right = sum(ens.run(prompt, params).answer == "yes" for _ in range(n))
        acc, exact = right / n, binomial_majority(m, args.p)
        half = 1.96 * math.sqrt(exact * (1 - exact) / n)
        inside = abs(acc - exact) <= half
        print(
            f"{m:>7} {acc:>9.4f} {exact:>9.4f}   [{exact - half:.4f}, {exact + half:.4f}]  {inside}"
        )

    for p in sorted({args.p, 0.8, 0.9}):
        early_stop_section(prompt, params, n, p)

    print("\noverhead per request (instant members)")
    k = args.overhead_requests
    one = Biased("solo", 1.0, seed=1)
    t0 = time.perf_counter()
    for _ in range(k):
        one.complete(prompt, params)
    single = (time.perf_counter() - t0) / k
    for mode in ("sequential", "parallel"):
        for m in (3, 5):
            ens = EnsembleBackend(
                [Biased(f"m{i}", 1.0, seed=i) for i in range(m)], Majority(), mode=mode
            )
            t0 = time.perf_counter()
            for _ in range(k):
                ens.run(prompt, params)
            per = (time.perf_counter() - t0) / k
            print(
                f"{mode:>10}, {m} members: {per * 1000:.3f} ms per request vs "
                f"{single * 1000:.4f} ms for one member's call: overhead "
                f"{(per - single) * 1000:.3f} ms ({(per - single) / m * 1000:.3f} ms per member)"
            )


if __name__ == "__main__":
    main()
