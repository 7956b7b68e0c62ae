"""Process-wide compute discipline: one lock, session-private torch RNG streams.

Every training-session call and every seeded model construction runs while
holding :data:`COMPUTE_LOCK`, with the session's own torch RNG state swapped
into torch's global generator (dropout draws from it). Two sessions in one
process therefore never perturb each other's random streams, so a run's loss
curve depends on its seed only, not on what else the process is doing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

__all__ = ["COMPUTE_LOCK", "seeded", "torch_state_for_seed"]

COMPUTE_LOCK = threading.RLock()


def torch_state_for_seed(seed: int) -> torch.Tensor:
    """The CPU generator state ``torch.manual_seed(seed)`` would produce."""
    return torch.Generator().manual_seed(seed).get_state()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global generator seeded to ``seed``, then put it back."""
    with COMPUTE_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
