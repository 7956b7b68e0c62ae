"""``mc_logprob`` and ``pass_at_k`` through ``crucible eval`` on crucible-local's tiny-llama.

The option log-probabilities are checked against a computation written here with
torch on the sampler's own module (not the training session the harness uses), and
pass@k's programs run for real in the sandbox: right, wrong, hanging and
network-reaching completions of the shipped HumanEval sample."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.ir import DatasetSpec, ModelSpec
from crucible_core.ir.common import BackendRef
from crucible_core.ir.training import TrainingJob

MODEL = ModelSpec(name="tiny-llama", max_seq_len=256)


def _torch_option_sums(model: Any, items: Any) -> list[list[float]]:
    import torch

    out: list[list[float]] = []
    with torch.no_grad():
        for item in items:
            sums: list[float] = []
            for datum in item.datums:
                ids = torch.tensor([datum.model_input])
                logits = model(input_ids=ids).logits[0].float()
                lp = torch.log_softmax(logits, dim=-1)
                targets = datum.loss_fn_inputs.target_tokens
                weights = datum.loss_fn_inputs.weights
                sums.append(
                    sum(
                        w * float(lp[i, t])
                        for i, (t, w) in enumerate(zip(targets, weights, strict=True))
                        if w
                    )
                )
            out.append(sums)
    return out


@pytest.mark.slow
def test_mc_logprob_scores_options_through_the_session_forward(home: Path) -> None:
    from crucible_datasets.loading import read_dataset
    from crucible_datasets.render import get_renderer
    from crucible_harness.choice import choice_items, option_scores, pick
    from crucible_harness.evaluate import Target, evaluate

    from crucible_core.plugins import get_host

    host = get_host()
    backend = host.create("backend", "local")
    spec = DatasetSpec(uri="sample:mmlu")
    rows = read_dataset(spec).rows
    renderer = get_renderer(None, backend.get_tokenizer(MODEL))
    items = choice_items(rows, renderer, spec, limit=6, max_length=MODEL.max_seq_len)
    assert [i.answer for i in items] == ["A", "D", "A", "A", "D", "D"]
    assert all(i.letters == "ABCD" and len(i.datums) == 4 for i in items)
    # Only the reply (the letter, and the end of the turn) is scored, never the prompt.
    first = items[0].datums[0].loss_fn_inputs.weights
    assert first is not None
    assert 1 <= sum(first) <= 3

    job = TrainingJob(backend="local", model_spec=MODEL, dataset_spec=spec)
    session = backend.create_session(job, run_dir=home / "scratch")
    try:
        ours = option_scores(session, items, deadline_s=120)
    finally:
        session.close()
    theirs = _torch_option_sums(backend.load_sampler(MODEL, None).torch_model, items)
    for a, b in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, abs=1e-3)
        assert all(x < 0 for x in a)

    target = Target(label="base", backend=BackendRef(name="local"), model=MODEL,
                    checkpoint=None, template=None, run_dir=None)  # fmt: skip
    result = evaluate(target, "sample:mmlu", ["mc_logprob"], n=6, host=host, write=False)
    assert [e.output for e in result.examples] == [
        pick(s, "ABCD") for s in theirs
    ]  # every item gets a letter: the options' likelihoods always decide
    (metric,) = result.metrics
    right = [e.output == e.reference for e in result.examples]
    assert metric.name == "mc_logprob"
    assert metric.score == pytest.approx(sum(right) / len(right))
    assert [e.scores["mc_logprob"] for e in result.examples] == [float(r) for r in right]
    assert result.extract == "logprob"


def _problems() -> list[dict[str, Any]]:
    from crucible_datasets import load_rows

    return [dict(r) for r in load_rows(DatasetSpec(uri="sample:humaneval"))]


def test_pass_at_k_right_wrong_hanging_and_network_completions() -> None:
    """Real programs in the sandbox: the canonical solutions pass, wrong ones fail, a hang
    is killed at the timeout (the other programs still finish), and a completion that
    connects to a live 127.0.0.1 listener fails without reaching it."""
    from crucible_harness.code import pass_counts, pass_scores

    problems = _problems()[:3]
    good = [str(p["canonical_solution"]) for p in problems]
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.5)
        port = server.getsockname()[1]
        network = (
            "    import socket\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n" + good[2]
        )
        completions = [
            [good[0], "    return 0\n", f"```python\n{good[0]}```\n"],
            ["    while True:\n        pass\n", good[1], "    return None\n"],
            [network, network, good[2]],
        ]
        start = time.monotonic()
        passed, timeouts = pass_counts(problems, completions, timeout=2.0)
        elapsed = time.monotonic() - start
        with pytest.raises(TimeoutError):
            server.accept()
    assert passed == [2, 1, 1]  # the fenced completion counts; the network ones do not
    assert timeouts == 1
    assert elapsed < 20  # 9 programs on 2 workers, one killed at 2 s: nothing waits on the hang
    scores = pass_scores(3, passed)
    assert scores["pass@1"] == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert scores["pass@3"] == [1.0, 1.0, 1.0]


@pytest.mark.slow
def test_eval_pass_at_k_cli_on_a_backend_model(tmp_path: Path) -> None:
    env = {**os.environ, "CRUCIBLE_HOME": str(tmp_path / "home"), "CRUCIBLE_STRICT_PLUGINS": "1"}

    def cli(*argv: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "crucible_core.cli.main", *argv],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == code, (argv, done.stdout, done.stderr)
        return done

    base = ("eval", "tiny-llama", "--backend", "local", "--dataset", "sample:humaneval",
            "--metric", "pass_at_k", "--n", "2")  # fmt: skip
    out = json.loads(cli(*base, "--samples", "3", "--timeout", "2", "--json").stdout)
    assert out["samples"] == 3
    names = [m["name"] for m in out["metrics"]]
    assert names == ["pass@1", "pass@3"]
    # Random weights write no working function; every score is 0 with a [0, 0] interval.
    for m in out["metrics"]:
        assert (m["score"], m["low"], m["high"]) == (0.0, 0.0, 0.0)
    assert len(out["examples"]) == 2
    assert out["examples"][0]["reference"].startswith("    return sum(")
    table = cli(*base, "--samples", "2").stdout
    assert "pass@2" in table
    assert "95% CI" in table

    err = cli("eval", "tiny-llama", "--backend", "local", "--dataset", "sample:gsm8k",
              "--metric", "exact_match", "--samples", "4", code=2)  # fmt: skip
    assert "only pass_at_k" in err.stderr
    err = cli("eval", "tiny-llama", "--backend", "local", "--dataset", "sample:mmlu",
              "--metric", "mc_logprob,exact_match", code=2)  # fmt: skip
    assert "mix metrics that score differently" in err.stderr


_CODE = st.text(st.characters(blacklist_characters="`", blacklist_categories=("Cs",)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(code=_CODE, lang=st.sampled_from(["", "python", "py3"]), tail=st.booleans())
def test_clean_completion_unwraps_a_fence_and_leaves_bare_code_alone(
    code: str, lang: str, tail: bool
) -> None:
    from crucible_harness.code import clean_completion

    assert clean_completion(code) == code
    fenced = f"Here you go:\n```{lang}\n{code}" + ("```\nDone." if tail else "")
    assert clean_completion(fenced) == code


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.floats(-1e6, 0.0, allow_nan=False), min_size=2, max_size=10))
def test_pick_is_the_first_option_of_highest_score(scores: list[float]) -> None:
    from crucible_harness.choice import LETTERS, pick

    letter = pick(scores, LETTERS[: len(scores)])
    i = LETTERS.index(letter)
    assert scores[i] == max(scores)
    assert all(s < scores[i] for s in scores[:i])


@pytest.mark.slow
def test_pass_at_k_of_a_run_that_learned_the_problems(tmp_path: Path) -> None:
    """End to end: a run that memorised 4 HumanEval-style problems writes code that passes
    their tests in the sandbox; its untrained base writes none."""
    env = {**os.environ, "CRUCIBLE_HOME": str(tmp_path / "home"), "CRUCIBLE_STRICT_PLUGINS": "1"}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "crucible_core.cli.main", *argv],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done

    problems = tmp_path / "he4.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in _problems()[:4]))
    job = tmp_path / "job.toml"
    job.write_text(
        'backend = "local"\n'
        '[model_spec]\nname = "tiny-llama"\nmax_seq_len = 384\n'
        '[adapter_config]\nkind = "full"\n'
        "[learning_config]\nbatch_size = 4\nmax_steps = 60\nseed = 0\n"
        '[learning_config.optimizer]\nname = "adamw"\nlr = 5e-3\nweight_decay = 0.0\n'
        f"[dataset_spec]\nuri = {json.dumps(str(problems))}\n"
        'options = { preset = "humaneval" }\ntrain_on = "assistant"\n'
        '[checkpoint_policy]\nstrategy = "steps"\nsave_every = 60\nkeep_last = 1\n'
    )
    cli("train", str(job), "--job-id", "coder", "--no-progress")
    scored = {}
    for extra in ((), ("--base",)):
        out = json.loads(cli("eval", "coder", *extra, "--dataset", str(problems), "--preset",
                             "humaneval", "--metric", "pass_at_k", "--json").stdout)  # fmt: skip
        (metric,) = out["metrics"]
        assert metric["name"] == "pass@1"
        scored[extra] = metric["score"]
    assert scored[()] >= 0.75
    assert scored[("--base",)] == 0.0
