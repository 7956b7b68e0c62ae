"""Hugging Face libraries, imported the crucible-local way: offline and quiet.

Every code path that imports transformers or peft goes through
:func:`offline` first, so nothing is ever fetched from a hub at run time
(``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are read when those libraries
are imported; every ``from_pretrained`` call also passes
``local_files_only=True``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator

__all__ = ["offline", "peft_quiet"]

_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
_done = False
_lock = threading.Lock()
_warn_lock = threading.Lock()

#: Warnings peft 0.18+ emits for things crucible-local does on purpose, each
#: matched by message and category (everything else still reaches the user):
_PEFT_NOISE: tuple[tuple[str, type[Warning]], ...] = (
    # peft reads transformers' deprecated ``is_gradient_checkpointing`` property on
    # every PeftModel construction; nothing a caller can change (transformers 5.x).
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
    # One LoraConfig covers GPT-2's Conv1D layers and ordinary Linear layers at once;
    # peft fixes ``fan_in_fan_out`` per layer and says so.
    (r"fan_in_fan_out is set to (True|False) but the target module is", UserWarning),
)


def offline() -> None:
    """Disable hub access and progress bars, once per process, before transformers loads."""
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        for key, value in _OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        # transformers may already be imported by the host: make it offline and quiet too.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        _done = True


@contextlib.contextmanager
def peft_quiet() -> Iterator[None]:
    """Silence exactly the peft warnings listed in ``_PEFT_NOISE`` around one call."""
    # ``catch_warnings`` swaps process-wide state; one caller at a time.
    with _warn_lock, warnings.catch_warnings():
        for message, category in _PEFT_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
