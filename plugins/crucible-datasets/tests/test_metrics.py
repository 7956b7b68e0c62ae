"""Metrics: normalised matches, BLEU/ROUGE via the libraries, answer extraction, pass@k."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crucible_core.errors import ConfigError
from crucible_core.ir.training import DatasetSpec
from crucible_datasets import load_rows
from crucible_datasets.execution import (
    humaneval_program,
    netns_prefix,
    network_isolation,
    run_program,
)
from crucible_datasets.metrics import (
    bleu,
    exact_match,
    extract_choice,
    extract_final_number,
    gsm8k_accuracy,
    mc_accuracy,
    normalize_answer,
    pass_at_k,
    pass_at_k_estimate,
    rouge_l,
    token_f1,
)


def test_exact_match_and_f1() -> None:
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match(["The cat.", "a dog"], ["cat", ["bird", "Dog"]]) == {
        "exact_match": 1.0,
        "count": 2.0,
    }
    assert exact_match(["Cat"], ["cat"], normalize=False)["exact_match"] == 0.0
    f1 = token_f1(["the cat sat down"], ["a cat sat"])["token_f1"]
    assert f1 == pytest.approx(2 * (2 / 3) * 1.0 / ((2 / 3) + 1.0))
    assert token_f1(["x"], [["y", "x"]])["token_f1"] == 1.0
    with pytest.raises(ConfigError, match="2 predictions but 1 references"):
        exact_match(["a", "b"], ["a"])


@settings(max_examples=100, deadline=None)
@given(a=st.text(max_size=30), b=st.text(max_size=30))
def test_f1_is_symmetric_bounded_and_one_on_itself(a: str, b: str) -> None:
    ab = token_f1([a], [b])["token_f1"]
    assert 0.0 <= ab <= 1.0
    assert ab == pytest.approx(token_f1([b], [a])["token_f1"])
    assert token_f1([a], [a])["token_f1"] == 1.0
    assert exact_match([a], [a])["exact_match"] == 1.0


def test_bleu_and_rouge_come_from_the_libraries() -> None:
    import sacrebleu
    from rouge_score import rouge_scorer

    preds = ["the cat sat on the mat", "a quick brown fox"]
    refs = ["the cat sat on a mat", "the quick brown fox jumps"]
    assert bleu(preds, refs)["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert bleu(preds, preds)["bleu"] == pytest.approx(100.0)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = (
        sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)) / 2
    )
    assert rouge_l(preds, refs)["rouge_l"] == pytest.approx(expected)
    # Several references: BLEU uses them all, ROUGE-L takes the best.
    assert rouge_l(["a cat"], [["dog", "a cat"]])["rouge_l"] == pytest.approx(1.0)
    assert bleu(["the cat sat on the mat"], [["a dog", "the cat sat on the mat"]])[
        "bleu"
    ] == pytest.approx(100.0)


def test_multiple_choice() -> None:
    assert extract_choice("The answer is (C).") == "C"
    assert extract_choice("B. Paris") == "B"
    assert extract_choice("I think (D) fits best") == "D"
    assert extract_choice("no idea") is None
    assert extract_choice("Answer: B") == "B"
    assert extract_choice("I guess the answer is a cat") is None
    assert extract_choice("A") == "A"
    rows = load_rows(DatasetSpec(uri="sample:mmlu"))
    letters = ["ABCD"[r["answer"]] for r in rows]
    assert mc_accuracy(letters, rows)["mc_accuracy"] == 1.0
    shifted = ["ABCD"[(r["answer"] + 1) % 4] for r in rows]
    result = mc_accuracy([*shifted[:-1], "unsure"], rows)
    assert result["mc_accuracy"] == 0.0
    assert result["unparsed"] == 1.0
    assert mc_accuracy(["A", "b"], [0, "B"])["mc_accuracy"] == 1.0
    with pytest.raises(ConfigError, match="not a choice letter"):
        mc_accuracy(["A"], ["Z"])


def test_gsm8k_final_answers() -> None:
    assert extract_final_number("so 3 + 4 = 7\n#### 1,234") == Decimal("1234")
    assert extract_final_number("The answer is $12.50.") == Decimal("12.50")
    assert extract_final_number("first 3 then 4 then -5") == Decimal("-5")
    assert extract_final_number("nothing") is None
    rows = load_rows(DatasetSpec(uri="sample:gsm8k"))
    answers = [r["answer"] for r in rows]
    assert gsm8k_accuracy(answers, rows)["gsm8k_accuracy"] == 1.0
    finals = [a.rsplit("####", 1)[1].strip() for a in answers]
    assert gsm8k_accuracy([f"The answer is {f}." for f in finals], answers)["gsm8k_accuracy"] == 1.0
    off = gsm8k_accuracy([f"#### {int(f) + 1}" for f in finals], answers)
    assert off["gsm8k_accuracy"] == 0.0
    assert gsm8k_accuracy(["#### 5.0"], ["5"])["gsm8k_accuracy"] == 1.0
    with pytest.raises(ConfigError, match="holds no number"):
        gsm8k_accuracy(["1"], ["none"])


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 30), data=st.data())
def test_pass_at_k_estimator_matches_the_combinatorial_formula(n: int, data: st.DataObject) -> None:
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k_estimate(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_runs_the_sample_problems() -> None:
    problems = load_rows(DatasetSpec(uri="sample:humaneval"))
    good = [p["canonical_solution"] for p in problems]
    wrong = ["    return None\n" for _ in problems]
    result = pass_at_k([[g, w] for g, w in zip(good, wrong, strict=True)], problems, k=[1, 2])
    assert result["pass@1"] == pytest.approx(0.5)
    assert result["pass@2"] == pytest.approx(1.0)
    assert result["count"] == len(problems)
    assert pass_at_k(good[:2], problems[:2])["pass@1"] == 1.0
    with pytest.raises(ConfigError, match="exceeds the number of samples"):
        pass_at_k(good[:1], problems[:1], k=5)


def test_sandbox_limits() -> None:
    ok = run_program("print('hi')\n")
    assert ok.passed
    failed = run_program("assert 1 == 2, 'nope'\n")
    assert failed.status == "failed"
    assert "AssertionError: nope" in failed.detail
    slow = run_program("while True:\n    pass\n", timeout=1.0)
    assert slow.status == "timeout"
    assert slow.seconds < 5
    hog = run_program("x = bytearray(2 * 1024 ** 3)\n", memory_mb=256)
    assert hog.status == "failed"
    assert "MemoryError" in hog.detail
    big_file = run_program("open('f', 'wb').write(b'x' * (4 * 1024 * 1024))\n", max_file_mb=1)
    assert big_file.status == "failed"
    # The program runs in an empty temporary directory, with no inherited variables.
    env = run_program(
        "import os\nassert os.listdir('.') == ['program.py']\n"
        "assert 'CRUCIBLE_STRICT_PLUGINS' not in os.environ\n"
    )
    assert env.passed, env.detail
    with pytest.raises(ConfigError, match="needs prompt, test and entry_point"):
        humaneval_program({"prompt": "x"}, "y")


_CONNECT = (
    "import socket\n"
    "s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
    "s.sendall(b'leaked')\n"
)


def _listener() -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.5)
    return server


def _was_contacted(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


@pytest.mark.parametrize("netns", [None, False])
def test_sandboxed_code_cannot_reach_the_network(netns: bool | None) -> None:
    """A real TCP listener on 127.0.0.1: the same program reaches it when run plainly (so the
    test can fail) and not from the sandbox, with the namespace (where available) or with the
    audit hook alone (``netns=False``)."""
    with _listener() as server:
        port = server.getsockname()[1]
        program = _CONNECT.format(port=port)
        plain = subprocess.run([sys.executable, "-c", program], timeout=30, check=False)
        assert plain.returncode == 0
        assert _was_contacted(server)
        result = run_program(program, timeout=10.0, netns=netns)
        assert result.status == "failed"
        assert not _was_contacted(server)
        raw = run_program(
            f"import socket\nsocket.socket().connect(('127.0.0.1', {port}))\n", netns=netns
        )
        assert raw.status == "failed"
        assert not _was_contacted(server)
    if netns is False:
        assert "sandbox: socket.getaddrinfo is not allowed" in result.detail
        assert "sandbox: socket.__new__ is not allowed" in raw.detail
    # A process the program starts would not be hooked: starting one is refused too.
    spawn = run_program("import subprocess\nsubprocess.run(['true'])\n", netns=netns)
    assert spawn.status == "failed"
    assert "subprocess.Popen is not allowed" in spawn.detail


def test_network_namespace_blocks_what_the_hook_cannot_see() -> None:
    """Where user namespaces work (this machine: probed by ``network_isolation``), even a
    connection from a process started around the hook fails: the kernel has no route."""
    if "netns" not in network_isolation():
        assert network_isolation() == ["audit"]
        with pytest.raises(ConfigError, match="cannot create a network namespace"):
            run_program("pass\n", netns=True)
        return
    with _listener() as server:
        port = server.getsockname()[1]
        # os.execv replaces the hooked interpreter with a fresh one that has no hook.
        escape = (
            "import os, sys\n"
            "os.execv(sys.executable, [sys.executable, '-c', "
            f"{_CONNECT.format(port=port)!r}])\n"
        )
        hooked = run_program(escape, netns=True)
        assert hooked.status == "failed"
        assert "os.exec is not allowed" in hooked.detail
        # The namespace alone (no hook): the kernel refuses the connection.
        bare = subprocess.run(
            [*netns_prefix(), sys.executable, "-c", _CONNECT.format(port=port)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert bare.returncode != 0
        assert "Network is unreachable" in bare.stderr
        assert not _was_contacted(server)
