"""What this plugin provides, as plain tables (no imports beyond the standard library).

``plugin.py`` registers these through the hooks; the library functions
(:func:`crucible_datasets.load_rows` and friends) resolve names from the same
tables without pluggy, so both paths always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "COMMANDS",
    "METRICS",
    "RENDERERS",
    "REWARDS",
    "SAMPLES",
    "SOURCES",
    "STAGES",
    "SampleInfo",
    "SourceInfo",
]


@dataclass(frozen=True)
class SourceInfo:
    """A dataset source: the URI schemes and file suffixes that select it."""

    name: str
    factory: str
    summary: str
    schemes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SampleInfo:
    """A sample shipped with the package (``sample:<name>``).

    ``fields`` are the column roles used when the spec leaves ``fields`` at its
    defaults; ``preset`` names a row formatter (see :mod:`crucible_datasets.fields`).
    """

    name: str
    file: str
    summary: str
    kind: str
    rows: int
    preset: str | None = None
    fields: dict[str, str] = field(default_factory=dict[str, str])


_P = "crucible_datasets"

SOURCES: tuple[SourceInfo, ...] = (
    SourceInfo(
        "jsonl",
        f"{_P}.sources:JsonlSource",
        "JSON Lines, one object per line (optionally gzipped), streamed",
        schemes=("jsonl", "ndjson"),
        suffixes=(".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz"),
    ),
    SourceInfo(
        "json",
        f"{_P}.sources:JsonSource",
        "A JSON array of objects (e.g. alpaca_data.json), read whole",
        schemes=("json",),
        suffixes=(".json", ".json.gz"),
    ),
    SourceInfo(
        "csv",
        f"{_P}.sources:CsvSource",
        "CSV/TSV with a header row (or options.columns), streamed",
        schemes=("csv", "tsv"),
        suffixes=(".csv", ".tsv", ".csv.gz", ".tsv.gz"),
    ),
    SourceInfo(
        "parquet",
        f"{_P}.sources:ParquetSource",
        "Parquet file or directory of files (pyarrow), streamed by record batch",
        schemes=("parquet",),
        suffixes=(".parquet", ".pq"),
    ),
    SourceInfo(
        "hf-disk",
        f"{_P}.sources:HfDiskSource",
        "A Hugging Face dataset saved with save_to_disk (Dataset or DatasetDict)",
        schemes=("hf-disk",),
    ),
    SourceInfo(
        "hf",
        f"{_P}.sources:HfSource",
        "Hugging Face dataset files on disk (a downloaded repo or the local HF cache); "
        "never downloads",
        schemes=("hf",),
    ),
    SourceInfo(
        "sample",
        f"{_P}.sources:SampleSource",
        "A sample shipped with crucible-datasets (sample:chat, sample:gsm8k, ...)",
        schemes=("sample",),
    ),
)

SAMPLES: tuple[SampleInfo, ...] = (
    SampleInfo(
        "chat",
        "chat.jsonl",
        "Short instruction/chat conversations ({messages: [...]})",
        kind="chat",
        rows=180,
    ),
    SampleInfo(
        "dates",
        "dates.jsonl",
        "ISO dates written out ('2004-03-06' -> '6 March 2004'): a task a tiny model "
        "learns on the CPU in seconds",
        kind="chat",
        rows=500,
    ),
    SampleInfo(
        "gsm8k",
        "gsm8k.jsonl",
        "Math word problems in GSM8K format (question, answer ending '#### N')",
        kind="completion",
        rows=60,
        preset="gsm8k",
    ),
    SampleInfo(
        "mmlu",
        "mmlu.jsonl",
        "Multiple choice in MMLU format (question, subject, choices[4], answer index)",
        kind="completion",
        rows=48,
        preset="mmlu",
    ),
    SampleInfo(
        "humaneval",
        "humaneval.jsonl",
        "Python functions in HumanEval format (task_id, prompt, canonical_solution, "
        "test, entry_point)",
        kind="completion",
        rows=12,
        preset="humaneval",
    ),
    SampleInfo(
        "preference",
        "preference.jsonl",
        "Preference pairs (prompt, chosen, rejected)",
        kind="preference",
        rows=40,
    ),
)

#: name -> (factory, summary). Factories take ``(tokenizer, **options)``.
RENDERERS: dict[str, tuple[str, str]] = {
    "plain": (f"{_P}.render:plain", "Role-tagged plain text: <|user|>\\n...; EOS ends a reply"),
    "llama3": (f"{_P}.render:llama3", "Llama-3 headers: <|start_header_id|>...<|eot_id|>"),
    "chatml": (f"{_P}.render:chatml", "ChatML: <|im_start|>role\\n...<|im_end|>"),
    "qwen": (f"{_P}.render:chatml", "Qwen chat format (ChatML)"),
    "chat_template": (
        f"{_P}.render:chat_template",
        "The tokenizer's own Jinja chat_template (Hugging Face semantics)",
    ),
}

#: name -> (factory, summary). Factories are ``(predictions, references, **options)``.
METRICS: dict[str, tuple[str, str]] = {
    "exact_match": (f"{_P}.metrics:exact_match", "Exact match after SQuAD normalisation"),
    "token_f1": (f"{_P}.metrics:token_f1", "Token-level F1 (SQuAD), best over references"),
    "bleu": (f"{_P}.metrics:bleu", "Corpus BLEU (sacrebleu), 0-100"),
    "rouge_l": (f"{_P}.metrics:rouge_l", "ROUGE-L F-measure (rouge-score), mean"),
    "mc_accuracy": (
        f"{_P}.metrics:mc_accuracy",
        "Multiple-choice accuracy: the letter picked vs the answer",
    ),
    "gsm8k_accuracy": (
        f"{_P}.metrics:gsm8k_accuracy",
        "GSM8K final-answer accuracy (number after ####, else the last number)",
    ),
    "pass_at_k": (
        f"{_P}.metrics:pass_at_k",
        "pass@k of code run in a subprocess with a timeout and resource limits",
    ),
}

#: name -> (factory, summary).
REWARDS: dict[str, tuple[str, str]] = {
    "gsm8k": (f"{_P}.rewards:gsm8k", "GSM8K final-answer correctness (1 or 0)"),
    "exact_match": (f"{_P}.rewards:exact_match", "Exact match after SQuAD normalisation (1 or 0)"),
    "number": (
        f"{_P}.rewards:number",
        "1 for the reference's number, else half the share of digits (shaped, for "
        "'answer with the number N' tasks)",
    ),
}

#: name -> (factory, summary).
STAGES: dict[str, tuple[str, str]] = {
    "data.load": (
        f"{_P}.stages:DataLoadStage",
        "Read the job's dataset, split off validation rows, hash the content",
    ),
    "data.tokenize": (
        f"{_P}.stages:DataTokenizeStage",
        "Render rows with a chat template and tokenize them into Datums",
    ),
}

#: name -> (factory, summary).
COMMANDS: dict[str, tuple[str, str]] = {
    "datasets": (f"{_P}.cli:command", "List, inspect and hash datasets"),
}
