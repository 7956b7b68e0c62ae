"""The identifiers the tinker SDK expects, made and parsed in one place.

- session id: opaque (``sess-<hex>``).
- model id: ``{session_id}:train:{model_seq_id}`` -- the SDK computes it itself
  for a model created by loading a checkpoint, so the format is fixed.
- sampling session id: ``{session_id}:sample:{sampling_session_seq_id}``.
- request (future) id: opaque (``req-<hex>``).
- checkpoint path: ``tinker://{run_id}/{weights|sampler_weights}/{name}`` with
  exactly three ``/``-separated parts after the scheme; the run id is the model
  id (it may contain ``:``), the name may not contain ``/``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CheckpointPath",
    "model_id",
    "new_request_id",
    "new_session_id",
    "parse_model_id",
    "sampling_session_id",
    "sequence_ids",
]

SCHEME = "tinker://"
Kind = Literal["state", "sampler", "external"]
_KIND_SEGMENT: dict[str, Kind] = {
    "weights": "state",
    "sampler_weights": "sampler",
    "external_weights": "external",
}
_SEGMENT_OF: dict[str, str] = {
    "state": "weights",
    "sampler": "sampler_weights",
    "external": "external_weights",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+=-]{0,199}$")


def new_session_id() -> str:
    return f"sess-{secrets.token_hex(8)}"


def new_request_id() -> str:
    return f"req-{secrets.token_hex(12)}"


def model_id(session_id: str, model_seq_id: int) -> str:
    return f"{session_id}:train:{model_seq_id}"


def parse_model_id(value: str) -> tuple[str, int] | None:
    """``(session_id, model_seq_id)`` of a model id, or None if it is not one."""
    head, sep, tail = value.rpartition(":train:")
    if not sep or not head or not tail.isdigit():
        return None
    return head, int(tail)


def sampling_session_id(session_id: str, sampling_session_seq_id: int) -> str:
    return f"{session_id}:sample:{sampling_session_seq_id}"


def sequence_ids(request_id: str, n: int) -> list[str]:
    """One id per requested sample (they become ``SampledSequence.sequence_id``)."""
    return [f"{request_id}:{i}" for i in range(n)]


def check_name(name: str) -> str:
    """A checkpoint name usable in a tinker path; ValueError otherwise."""
    if not _NAME.match(name):
        raise ValueError(
            f"checkpoint name {name!r} must be 1-200 characters of letters, digits and . _ @ + = -"
            ", starting with a letter or digit (no '/')"
        )
    return name


@dataclass(frozen=True)
class CheckpointPath:
    """A parsed ``tinker://run/kind/name`` path."""

    run_id: str
    kind: Kind
    name: str

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.run_id}/{_SEGMENT_OF[self.kind]}/{self.name}"

    @classmethod
    def make(cls, run_id: str, kind: Kind, name: str) -> CheckpointPath:
        return cls(run_id=run_id, kind=kind, name=check_name(name))

    @classmethod
    def parse(cls, uri: str) -> CheckpointPath:
        """Parse a path; ValueError if it is not a tinker path this server writes."""
        if not uri.startswith(SCHEME):
            raise ValueError(f"not a tinker path (must start with {SCHEME}): {uri!r}")
        parts = uri[len(SCHEME) :].split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"a tinker path has the form {SCHEME}<run>/<kind>/<name>: {uri!r}")
        run_id, segment, name = parts
        kind = _KIND_SEGMENT.get(segment)
        if kind is None:
            raise ValueError(
                f"unknown checkpoint kind {segment!r} in {uri!r} "
                "(weights, sampler_weights or external_weights)"
            )
        return cls(run_id=run_id, kind=kind, name=name)
