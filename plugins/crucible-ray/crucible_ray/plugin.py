"""crucible-ray's hooks: the ``ray`` executor."""

from __future__ import annotations

from crucible_core import RegisterExecutor, hookimpl


@hookimpl
def register_executors(register: RegisterExecutor) -> None:
    register(
        "ray",
        "crucible_ray.executor:RayExecutor",
        summary="Run callables and worker jobs as Ray tasks (address: local, auto, ray://...)",
    )
