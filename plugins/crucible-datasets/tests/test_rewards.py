"""The reward functions crucible-datasets registers for ``workflow = "rl"``."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.errors import ConfigError
from crucible_core.plugins import PluginHost
from crucible_core.train.rewards import resolve_reward
from crucible_datasets.rewards import exact_match, gsm8k, number


def test_the_rewards_are_registered_under_their_names(host: PluginHost) -> None:
    for name, fn in (("gsm8k", gsm8k), ("exact_match", exact_match), ("number", number)):
        assert resolve_reward(name, host) is fn


def test_gsm8k_scores_final_answers_on_the_shipped_sample() -> None:
    text = resources.files("crucible_datasets").joinpath("samples/gsm8k.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    for row in rows:
        answer = row["answer"]
        final = answer.split("####")[-1].strip()
        assert gsm8k(answer, answer) == 1.0  # the worked solution itself
        assert gsm8k(f"So the answer is {final}.", answer) == 1.0
        assert gsm8k(f"The answer is {int(final.replace(',', '')) + 1}.", answer) == 0.0
        assert gsm8k("I do not know.", answer) == 0.0
    with pytest.raises(ConfigError, match="holds no number"):
        gsm8k("42", "no number here")


def test_exact_match_normalises_case_punctuation_and_articles() -> None:
    assert exact_match("The Paris.", "paris") == 1.0
    assert exact_match("Paris, France", "paris") == 0.0


@given(st.integers(-1000, 1000), st.text(max_size=12))
def test_number_gives_one_for_the_answer_and_partial_credit_below_half(n: int, noise: str) -> None:
    assert number(f"{n}", str(n)) == 1.0
    assert number(f"{n} apples", f"{n}") == 1.0
    other = number(noise, str(n))
    assert 0.0 <= other <= 1.0
    if not any(c.isdigit() for c in noise):
        assert other == 0.0
    assert number("x1y", "7") == pytest.approx(0.5 / 3)
