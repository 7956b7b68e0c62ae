"""The comparison report and the commands' contracts, on evaluation files made here
(no model): what is paired, what is significant, byte-identical output, light imports."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from crucible_harness.cli import EvalCommand, EvalCompareCommand
from crucible_harness.evaluate import EvalExample, EvalResult, MetricScore, _extractor, read_eval
from crucible_harness.report import compare_evals, latex_table, markdown_report

from crucible_core.errors import ConfigError, NotFound
from crucible_core.testing import check_command, check_light_import


def _result(
    eval_id: str, right: list[int], *, inputs: str = "q", dataset: str = "d1"
) -> EvalResult:
    mean = sum(right) / len(right)
    return EvalResult(
        eval_id=eval_id,
        created_at="2026-01-01T00:00:00+00:00",
        target=eval_id,
        run_id=None,
        backend="local",
        model="tiny-llama",
        checkpoint=None,
        dataset="sample:gsm8k",
        dataset_hash="sha256:" + dataset * 32,
        template="plain",
        template_hash=None,
        extract="number",
        metrics=[
            MetricScore(
                name="exact_match",
                score=mean,
                mean=mean,
                low=0.0,
                high=1.0,
                confidence=0.95,
                method="BCa",
            )
        ],
        examples=[
            EvalExample(input=f"{inputs}{i}", output="", reference="", scores={"exact_match": r})
            for i, r in enumerate(right)
        ],
        seconds=1.0,
    )


def _write(tmp: Path, result: EvalResult) -> Path:
    path = tmp / f"{result.eval_id}.json"
    path.write_bytes(msgspec.json.encode(result))
    return path


GOOD = [1] * 25 + [0] * 5
BAD = [0] * 25 + [1] * 2 + [0] * 3


def test_same_items_are_paired_and_a_large_gain_is_significant() -> None:
    paired, comps = compare_evals(_result("eval-a", GOOD), _result("eval-b", BAD))
    assert paired
    (c,) = comps
    assert c.comparison.test.test == "McNemar's exact test"
    assert c.significant
    assert c.p_adjusted == pytest.approx(c.comparison.test.p_value)  # one metric: Holm = raw


def test_different_items_are_independent_samples() -> None:
    paired, comps = compare_evals(_result("eval-a", GOOD), _result("eval-b", BAD, inputs="other"))
    assert not paired
    assert comps[0].comparison.test.test == "Fisher's exact test"
    paired, _ = compare_evals(_result("eval-a", GOOD), _result("eval-b", BAD, dataset="d2"))
    assert not paired


def test_equal_scores_are_not_significant() -> None:
    _, (c,) = compare_evals(_result("eval-a", GOOD), _result("eval-b", GOOD))
    assert not c.significant
    assert c.comparison.test.p_value == 1.0


def test_report_is_byte_identical_and_lists_hashes(tmp_path: Path) -> None:
    files = (_write(tmp_path, _result("eval-a", GOOD)), _write(tmp_path, _result("eval-b", BAD)))
    a, b = read_eval(files[0]), read_eval(files[1])
    one = markdown_report(a, b, files=files)
    two = markdown_report(read_eval(files[0]), read_eval(files[1]), files=files)
    assert one == two
    import hashlib

    for f in files:
        assert hashlib.sha256(f.read_bytes()).hexdigest() in one
    assert "| exact_match | 0.8333" in one
    assert "**yes**" in one


def test_unknown_metric_and_bad_files(tmp_path: Path) -> None:
    a, b = _result("eval-a", GOOD), _result("eval-b", BAD)
    with pytest.raises(ConfigError, match="'bleu' was not computed by both"):
        compare_evals(a, b, metrics=["bleu"])
    with pytest.raises(NotFound, match="no metric 'bleu'"):
        a.per_example("bleu")
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    with pytest.raises(ConfigError, match="not an evaluation file"):
        read_eval(junk)


@pytest.mark.parametrize(
    ("preset", "text", "expected"),
    [
        ("gsm8k", "So 14 + 19 = 33.\n#### 33", "33"),
        ("gsm8k", "The answer is 1,250.", "1250"),
        ("gsm8k", "no number here", ""),
        ("mmlu", "The answer is (C).", "C"),
        (None, " Keep me ", " Keep me "),
    ],
)
def test_answer_extraction(preset: str | None, text: str, expected: str) -> None:
    _, fn = _extractor(preset, "auto")
    assert fn(text) == expected


def test_commands_keep_the_contract(home: Path, tmp_path: Path) -> None:
    run = check_command(EvalCompareCommand(), ["eval-nope", "eval-nope2"], exit_code=4,
                        name="eval-compare")  # fmt: skip
    assert run.error is not None
    files = (_write(tmp_path, _result("eval-a", GOOD)), _write(tmp_path, _result("eval-b", BAD)))
    out = tmp_path / "r.md"
    check_command(EvalCompareCommand(), [str(files[0]), str(files[1]), "--out", str(out)],
                  name="eval-compare")  # fmt: skip
    assert out.read_text().startswith("# Evaluation comparison")
    check_command(EvalCommand(), ["run", "--dataset", "sample:gsm8k"], exit_code=2, name="eval")
    check_command(EvalCommand(), ["no-such-run", "--dataset", "sample:gsm8k", "--metric",
                                 "exact_match"], exit_code=4, name="eval")  # fmt: skip


def test_plugin_and_cli_import_nothing_heavy() -> None:
    check_light_import("crucible_harness.plugin")
    check_light_import("crucible_harness.cli", heavy=("numpy", "scipy", "matplotlib", "torch"))


def test_latex_table_escapes_and_marks_significance(tmp_path: Path) -> None:
    a, b = _result("eval_a", GOOD), _result("eval-b", BAD)
    tex = latex_table(a, b)
    assert tex == latex_table(a, b)  # same inputs, same bytes
    assert "% A = eval\\_a, B = eval-b (paired)" in tex
    assert "exact\\_match & 0.8333 & 0.06667" in tex
    assert "McNemar's exact test" in tex
    assert "$^{*}$" in tex
    assert tex.startswith("% A")
    assert "\\begin{tabular}" in tex
    assert "\\bottomrule" in tex
    files = (_write(tmp_path, a), _write(tmp_path, b))
    run = check_command(EvalCompareCommand(), [str(files[0]), str(files[1]), "--format", "latex"],
                        name="eval-compare")  # fmt: skip
    assert run.stdout == tex


def test_html_report_is_self_contained_and_byte_identical(tmp_path: Path) -> None:
    import base64
    import re

    from crucible_harness.htmlreport import html_report

    files = (_write(tmp_path, _result("eval-a", GOOD)), _write(tmp_path, _result("eval-b", BAD)))
    a, b = read_eval(files[0]), read_eval(files[1])
    page = html_report(a, b, files=files)
    assert page == html_report(read_eval(files[0]), read_eval(files[1]), files=files)
    assert page.startswith("<!DOCTYPE html>")
    assert "<td>McNemar&#x27;s exact test</td>" in page
    (png,) = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert base64.b64decode(png).startswith(b"\x89PNG")
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere
    out = tmp_path / "r.html"
    check_command(EvalCompareCommand(), [str(files[0]), str(files[1]), "--format", "html",
                                         "--out", str(out)], name="eval-compare")  # fmt: skip
    assert out.read_text() == page
