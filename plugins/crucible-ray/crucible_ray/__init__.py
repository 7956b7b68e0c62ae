"""crucible-ray: run Crucible jobs as Ray tasks on a Ray cluster (``--executor ray``).

``ray`` is imported lazily (on the first executor built), so installing this
plugin costs nothing to ``import crucible_core`` or ``crucible --help``.
"""

from __future__ import annotations

from crucible_ray.executor import RayExecutor
from crucible_ray.resources import ray_options

__all__ = ["RayExecutor", "ray_options"]
