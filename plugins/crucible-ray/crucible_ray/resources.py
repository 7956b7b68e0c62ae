"""ResourceSpec -> Ray task options: what a job asks of the cluster.

- ``cpus`` -> ``num_cpus`` (1 when unset: Ray's own default for tasks);
- ``gpus`` -> ``num_gpus``; ``gpu_type`` -> ``accelerator_type`` (Ray's
  names, e.g. ``A100``);
- ``memory_gb`` -> ``memory`` in bytes (Ray schedules on it; it does not
  cap the process);
- each label ``key: value`` -> the custom resource ``"key=value"`` with a
  tiny amount (:data:`LABEL_AMOUNT`), so it selects nodes started with
  ``ray start --resources '{"key=value": 1000}'`` without limiting how many
  tasks share them.

``timeout_s`` is not a Ray option: the worker enforces it (and cancels the
task).
"""

from __future__ import annotations

from typing import Any, Final

from crucible_core.ir.common import ResourceSpec

__all__ = ["LABEL_AMOUNT", "label_resource", "ray_options"]

#: How much of a label's custom resource one task takes (Ray accepts down to 0.0001).
LABEL_AMOUNT: Final = 0.001


def label_resource(key: str, value: str) -> str:
    """The Ray custom resource a node declares to carry label ``key: value``."""
    return f"{key}={value}"


def ray_options(spec: ResourceSpec | None) -> dict[str, Any]:
    """Keyword arguments for ``ray.remote(...).options(...)`` asking for ``spec``."""
    if spec is None:
        return {"num_cpus": 1}
    options: dict[str, Any] = {"num_cpus": spec.cpus if spec.cpus is not None else 1}
    if spec.gpus:
        options["num_gpus"] = spec.gpus
    if spec.gpu_type:
        options["accelerator_type"] = spec.gpu_type
    if spec.memory_gb is not None:
        options["memory"] = int(spec.memory_gb * 1024**3)
    if spec.labels:
        options["resources"] = {
            label_resource(k, v): LABEL_AMOUNT for k, v in sorted(spec.labels.items())
        }
    return options
