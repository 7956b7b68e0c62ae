"""crucible-tinker: a crucible backend over the ``tinker`` SDK, and a Tinker-compatible server.

- :class:`crucible_tinker.backend.TinkerBackend` (registered as backend ``tinker``)
  trains and samples through ``tinker.ServiceClient``.
- :mod:`crucible_tinker.server` serves the Tinker HTTP protocol over any
  registered crucible TrainingBackend (``crucible serve-tinker``).

Importing this package imports neither tinker nor the server stack.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
