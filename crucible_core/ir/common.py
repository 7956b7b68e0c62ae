"""IR pieces shared by several families."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from crucible_core.ir.base import (
    IRStruct,
    NonNegativeInt,
    Params,
    PositiveFloat,
)

__all__ = ["BackendRef", "ResourceSpec"]


class ResourceSpec(IRStruct, frozen=True, kw_only=True):
    """What a job or training run needs from the machine that runs it."""

    cpus: PositiveFloat | None = None
    memory_gb: PositiveFloat | None = None
    gpus: NonNegativeInt = 0
    gpu_type: str | None = None
    timeout_s: PositiveFloat | None = None
    labels: dict[str, str] = {}


class BackendRef(IRStruct, frozen=True, kw_only=True):
    """A backend by registered name, with options, and backends to fall back to in order."""

    name: Annotated[str, Meta(min_length=1)]
    options: Params = {}
    fallbacks: list[str] = []
