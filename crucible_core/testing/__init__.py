"""The conformance kit: checks a plugin author calls from their own tests.

Each ``check_*`` function exercises one contract of
:mod:`crucible_core.contracts` against a real implementation and raises
:class:`ConformanceError` (an ``AssertionError``, so pytest shows it as a test
failure) naming the call and the broken rule. Every call the kit makes is
bounded by the check's ``timeout``, and an exception the plugin raises
where the contract expects success is reported the same way::

    from crucible_core.testing import check_training_backend

    def test_my_backend_conforms(tmp_path):
        check_training_backend(MyBackend(), job)

One module per contract: :mod:`~crucible_core.testing.inference`,
:mod:`~crucible_core.testing.training`, :mod:`~crucible_core.testing.stages`,
:mod:`~crucible_core.testing.commands`, :mod:`~crucible_core.testing.datasets`,
:mod:`~crucible_core.testing.executors`, :mod:`~crucible_core.testing.artifacts`,
:mod:`~crucible_core.testing.imports` and :mod:`~crucible_core.testing.host`;
each module's docstring lists the rules its check asserts.

This package is part of the supported API (the names below); its checks only
get stricter in minor releases when the contract documents a rule they did
not yet check.
"""

from __future__ import annotations

from crucible_core.testing._guard import ConformanceError
from crucible_core.testing.artifacts import check_artifact_store
from crucible_core.testing.commands import CommandRun, check_command
from crucible_core.testing.datasets import check_dataset_source
from crucible_core.testing.executors import check_executor
from crucible_core.testing.host import isolated_host
from crucible_core.testing.imports import DEFAULT_HEAVY_MODULES, check_light_import
from crucible_core.testing.inference import check_inference_backend
from crucible_core.testing.scripted import scripted_completion
from crucible_core.testing.stages import KitStageContext, check_stage
from crucible_core.testing.training import check_training_backend, make_datums

__all__ = [
    "DEFAULT_HEAVY_MODULES",
    "CommandRun",
    "ConformanceError",
    "KitStageContext",
    "check_artifact_store",
    "check_command",
    "check_dataset_source",
    "check_executor",
    "check_inference_backend",
    "check_light_import",
    "check_stage",
    "check_training_backend",
    "isolated_host",
    "make_datums",
    "scripted_completion",
]
