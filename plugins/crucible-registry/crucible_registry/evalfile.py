"""Reading ``crucible eval`` results (``eval-<id>.json``) as evidence for a version.

crucible-harness writes one JSON file per evaluation (its
``crucible_harness.evaluate.EvalResult``, schema version "1"): the corpus
score of every metric and each example's scores. The registry reads the part
it needs with its own msgspec Struct, so importing an evaluation works
whether or not crucible-harness is installed on the machine that registers
(the file format is the contract; another schema version is refused).

:func:`find_eval` takes a path or an eval id (looked up in the run
directories and ``$CRUCIBLE_HOME/evals``, where ``crucible eval`` writes);
:func:`suite_of` names the suite after the dataset (``sample:gsm8k`` ->
``gsm8k``, ``data/dates.jsonl`` -> ``dates``), so the metrics become
``eval.gsm8k.exact_match``.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import msgspec

from crucible_core.errors import ConfigError, NotFound

__all__ = ["EvalFile", "find_eval", "read_eval_file", "suite_of"]

_SCHEMA = "1"


class _Metric(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    score: float


class _Example(msgspec.Struct, frozen=True, kw_only=True):
    scores: dict[str, float]


class EvalFile(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of an ``eval-<id>.json`` the registry uses (unknown fields are ignored)."""

    schema_version: str
    eval_id: str
    run_id: str | None
    checkpoint: str | None
    dataset: str
    dataset_hash: str
    metrics: list[_Metric]
    examples: list[_Example]

    def scores(self) -> dict[str, float]:
        """Each metric's corpus score (the number ``crucible eval`` reports)."""
        return {m.name: m.score for m in self.metrics}

    def per_example(self) -> dict[str, list[float]]:
        """Each metric's per-example scores, in the evaluation's example order."""
        return {m.name: [e.scores[m.name] for e in self.examples] for m in self.metrics}


def read_eval_file(path: Path) -> EvalFile:
    """Decode ``path``; NotFound if absent, ConfigError naming it if it is not an eval file."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise NotFound(
            f"{path}: no such evaluation file", hint="crucible eval writes one"
        ) from None
    try:
        result = msgspec.json.decode(raw, type=EvalFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(
            f"{path}: not a crucible eval result ({exc})",
            hint="pass the eval-<id>.json that `crucible eval` wrote",
        ) from None
    if result.schema_version != _SCHEMA:
        raise ConfigError(
            f"{path}: evaluation schema {result.schema_version!r}, this registry reads {_SCHEMA!r}",
            hint="upgrade crucible-registry",
        )
    if not result.metrics:
        raise ConfigError(f"{path}: the evaluation has no metric")
    for m in result.metrics:
        if any(m.name not in e.scores for e in result.examples):
            raise ConfigError(f"{path}: an example has no score for {m.name!r}")
    return result


def find_eval(ref: str | Path, run_dir: Path | None = None) -> Path:
    """An evaluation file: a path, or an eval id (``eval-...``) in ``run_dir``, a run, or evals/."""
    given = Path(ref).expanduser()
    if given.is_file():
        return given
    text = str(ref)
    if re.fullmatch(r"eval-[A-Za-z0-9_-]+", text):
        from crucible_core.records import paths

        home = paths.crucible_home()
        places = [run_dir] if run_dir is not None else []
        for candidate in [
            *(p / f"{text}.json" for p in places),
            home / "evals" / f"{text}.json",
            *home.glob(f"runs/*/{text}.json"),
        ]:
            if candidate.is_file():
                return candidate
    raise NotFound(
        f"no evaluation {text[:120]!r}",
        hint="pass the eval-<id>.json path `crucible eval` printed, or its eval id",
    )


def suite_of(dataset: str) -> str:
    """A suite name for a dataset URI: its last path part without suffixes, as a name."""
    tail = dataset.rsplit(":", 1)[-1] if "://" not in dataset else dataset.split("://", 1)[1]
    stem = PurePosixPath(tail.rstrip("/")).name.split(".", 1)[0] or "eval"
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-")
    return clean[:64] or "eval"
