"""``peft_quiet`` silences exactly peft's known noise; every other warning still shows."""

from __future__ import annotations

import warnings

from crucible_local._hf import peft_quiet


def test_peft_quiet_drops_only_the_listed_peft_warnings() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with peft_quiet():
            warnings.warn(
                "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
                FutureWarning,
                stacklevel=1,
            )
            warnings.warn(
                "fan_in_fan_out is set to False but the target module is `Conv1D`.",
                UserWarning,
                stacklevel=1,
            )
            warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
            # Right text, wrong category: not peft's warning, so it still shows.
            warnings.warn("`is_gradient_checkpointing` is deprecated", UserWarning, stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
    shown = [(str(w.message), w.category) for w in seen]
    assert shown == [
        ("something else is deprecated", FutureWarning),
        ("`is_gradient_checkpointing` is deprecated", UserWarning),
        ("`is_gradient_checkpointing` is deprecated", FutureWarning),  # outside: shown again
    ]
