"""The common base of every IR message and the named value constraints.

msgspec does not validate on construction, so data from outside always enters
through :mod:`crucible_core.ir.codec` (``decode``/``convert``); constructing a
Struct in Python trusts the caller. Constraints are declared once here with
``msgspec.Meta`` so that they appear in the published JSON Schemas.

Every float in the IR is finite: ``inf``/``nan`` (which TOML and msgpack can
carry) never mean anything a run can honour. msgspec's ``Meta`` has no
"finite" flag, so each float type is bounded by ``+-sys.float_info.max``
(``nan`` fails every comparison, ``inf`` the bound) and the check runs in
msgspec's C decoder; free-form :data:`Params` values are checked after decode
by :mod:`crucible_core.ir.codec`.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from crucible_core.ids import ID_PATTERN, MAX_ID_LENGTH

__all__ = [
    "FLOAT_MAX",
    "SCHEMA_VERSION",
    "FiniteFloat",
    "IRStruct",
    "Identifier",
    "ModuleRef",
    "NonNegativeFloat",
    "NonNegativeInt",
    "Params",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "SchemaVersion",
    "UnitInterval",
]

#: The version every top-level message is written with. A breaking change
#: bumps the major part; readers refuse an unknown major.
SCHEMA_VERSION = "1.1"

SchemaVersion = Annotated[
    str,
    Meta(
        pattern=r"^[0-9]+\.[0-9]+$",
        description="MAJOR.MINOR of the IR this message was written with; readers refuse an "
        "unknown MAJOR.",
    ),
]
PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
#: The largest finite float: the bound that makes a float constraint refuse inf and nan.
FLOAT_MAX = sys.float_info.max
FiniteFloat = Annotated[float, Meta(ge=-FLOAT_MAX, le=FLOAT_MAX)]
PositiveFloat = Annotated[float, Meta(gt=0, le=FLOAT_MAX)]
NonNegativeFloat = Annotated[float, Meta(ge=0, le=FLOAT_MAX)]
Probability = Annotated[float, Meta(ge=0, lt=1, description="A probability in [0, 1).")]
UnitInterval = Annotated[float, Meta(ge=0, le=1)]
Identifier = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=ID_PATTERN,
        description="Letters, digits and . _ : @ -, starting with a letter or digit, "
        "without '..' (the rule of crucible_core.ids: an id names a directory).",
    ),
]
ModuleRef = Annotated[
    str,
    Meta(
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$",
        description="An importable object as 'package.module:attribute'.",
    ),
]
#: Free-form scalar parameters (loss options, stage options...); their floats must be
#: finite too (checked after decode, see the module docstring).
Params = dict[str, Any]


class IRStruct(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every IR message: frozen, keyword-only, unknown fields refused.

    Subclasses restate ``kw_only=True`` (msgspec does not inherit it) and
    ``frozen=True``; a test walks every subclass to check.
    """
