"""Answer normalisation: the keys members' texts vote with."""

from __future__ import annotations

import pytest
from crucible_ensemble import GSM8K_FINAL_ANSWER, Normaliser
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.errors import ConfigError


@pytest.mark.parametrize(
    ("options", "text", "key"),
    [
        ({}, "  The Answer  is\n42! ", "the answer is 42"),
        ({}, "1,000.50", "1000.5"),
        ({}, "3.5 apples.", "3.5 apples"),
        ({}, "-7.0", "-7"),
        # Beyond Decimal's 28-digit context (found by the property below): exact, no error.
        ({}, "10000000000000000000000000000", "10000000000000000000000000000"),
        ({}, "1.00000000000000000000000000000001", "1.00000000000000000000000000000001"),
        ({}, "007.50", "7.5"),
        ({"numbers": False}, "1,000", "1000"),
        ({"case": False}, "Paris", "Paris"),
        ({"punctuation": False}, "Paris!", "paris!"),
        ({"choice_letters": True}, "(B) Paris", "b"),
        ({"choice_letters": True}, "The answer is C.", "c"),
        ({"choice_letters": True}, "d) none of these", "d"),
        ({"extract": GSM8K_FINAL_ANSWER}, "so 3 + 4 = 7\n#### 7", "7"),
        ({"extract": GSM8K_FINAL_ANSWER}, "#### 1,200", "1200"),
        ({"extract": r"answer: (\w+)"}, "no match here", "no match here"),
    ],
)
def test_keys(options: dict[str, object], text: str, key: str) -> None:
    assert Normaliser(**options).key(text) == key  # type: ignore[arg-type]


def test_a_bad_extractor_is_refused_with_the_field() -> None:
    with pytest.raises(ConfigError, match=r"normalise\.extract: invalid regular expression"):
        Normaliser(extract="(unclosed")


@given(st.text(max_size=60))
def test_the_default_key_is_idempotent_and_never_raises(text: str) -> None:
    n = Normaliser()
    key = n.key(text)
    assert n.key(key) == key


@given(st.text(max_size=40), st.sampled_from([" ", "  ", "\t", "\n"]))
def test_case_and_surrounding_whitespace_do_not_change_the_key(text: str, pad: str) -> None:
    n = Normaliser()
    assert n.key(pad + text.upper() + pad) == n.key(text.upper())
