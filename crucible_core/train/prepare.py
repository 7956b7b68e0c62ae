"""Prepare a TrainingJob's data once: load, split, render, tokenize into :class:`PreparedData`.

The work is done by the registered stages ``data.load`` and ``data.tokenize``
(crucible-datasets), so any plugin replacing them changes what every caller
gets. Both ``crucible plan`` and the training recipe call :func:`prepare`;
``crucible train`` plans first and hands the plan's :class:`PreparedData` to
the recipe, so the data is read and tokenized once per run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import msgspec

from crucible_core.contracts import StageContext
from crucible_core.ir.backend import Datum

if TYPE_CHECKING:
    from crucible_core.plugins import PluginHost

__all__ = ["ContextFactory", "PreparedData", "prepare"]


class PreparedData(msgspec.Struct, kw_only=True):
    """A job's data, ready to train on, and what the run records about it.

    For a DPO job (``group == 2``) ``train`` and ``validation`` hold each
    preference pair as two Datums in a row, chosen then rejected. For an RL or a
    distillation job ``train`` starts empty and ``prompts`` holds the prompts to
    sample from (the distillation teacher step fills ``train`` from them).
    """

    train: list[Datum]
    validation: list[Datum] = []
    #: Held-out prompts and answers for metrics scored on samples (``data.tokenize``).
    validation_prompts: list[dict[str, Any]] = []
    #: Content hash of the rows (``sha256:...``), independent of the file's format.
    dataset_hash: str | None = None
    rows: int = 0
    train_rows: int = 0
    validation_rows: int = 0
    skipped: int = 0
    #: Input tokens of the training Datums (one epoch).
    tokens: int = 0
    template: str | None = None
    template_hash: str | None = None
    #: Datums per example: 1, or 2 for preference pairs (chosen then rejected, in a row).
    group: int = 1
    #: Prompts of the training rows of an RL or distillation job (``data.tokenize``'s
    #: ``prompts``: ``tokens``, ``reference``, ``input``; ``messages`` for distillation).
    prompts: list[dict[str, Any]] = []

    @classmethod
    def from_stage_outputs(
        cls, loaded: Mapping[str, Any], tokenized: Mapping[str, Any]
    ) -> PreparedData:
        """The typed view of ``data.load`` and ``data.tokenize`` outputs."""
        return cls(
            train=cast(list[Datum], tokenized.get("train") or []),
            validation=cast(list[Datum], tokenized.get("validation") or []),
            validation_prompts=cast(
                list[dict[str, Any]], tokenized.get("validation_prompts") or []
            ),
            dataset_hash=cast(str | None, loaded.get("dataset_hash")),
            rows=len(cast(list[Any], loaded.get("rows") or [])),
            train_rows=len(cast(list[Any], loaded.get("train_rows") or [])),
            validation_rows=len(cast(list[Any], loaded.get("validation_rows") or [])),
            skipped=int(loaded.get("skipped") or 0),
            tokens=int(tokenized.get("tokens") or 0),
            template=cast(str | None, tokenized.get("template")),
            template_hash=cast(str | None, tokenized.get("template_hash")),
            group=int(tokenized.get("group") or 1),
            prompts=cast(list[dict[str, Any]], tokenized.get("prompts") or []),
        )


#: ``context(name, uses, inputs)``: the StageContext a data stage runs with.
ContextFactory = Callable[[str, str, Mapping[str, Mapping[str, Any]]], StageContext]


def prepare(host: PluginHost, context: ContextFactory) -> PreparedData:
    """Run the registered ``data.load`` then ``data.tokenize`` (as ``load``, ``tokenize``)."""
    load = host.create("stage", "data.load")
    loaded = dict(load.run(context("load", "data.load", {})) or {})
    tokenize = host.create("stage", "data.tokenize")
    tokenized = dict(tokenize.run(context("tokenize", "data.tokenize", {"load": loaded})) or {})
    return PreparedData.from_stage_outputs(loaded, tokenized)
