"""References and tags: parse(str(ref)) == ref for every valid reference; bad input is refused."""

from __future__ import annotations

import pytest
from crucible_registry.names import ModelRef, parse_ref, parse_tag
from hypothesis import given
from hypothesis import strategies as st

from crucible_core.errors import ConfigError

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True)
aliases = st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True).filter(lambda a: a != "latest")
refs = st.one_of(
    st.builds(ModelRef, names),
    st.builds(lambda n, v: ModelRef(n, version=v), names, st.integers(1, 10**9)),
    st.builds(lambda n, a: ModelRef(n, alias=a), names, aliases),
    st.builds(lambda n: ModelRef(n, latest=True), names),
)


@given(refs, st.booleans())
def test_references_round_trip(ref: ModelRef, as_uri: bool) -> None:
    text = f"models:/{ref}" if as_uri else str(ref)
    assert parse_ref(text) == ref


@given(st.text(max_size=60))
def test_any_text_parses_or_is_a_config_error(text: str) -> None:
    try:
        ref = parse_ref(text)
    except ConfigError:
        return
    assert parse_ref(str(ref)) == ref


@pytest.mark.parametrize(
    "bad", ["", "a/0", "a/-1", "a/x", "a@", "a@Prod", "a@latest", "../a", "a b", "a/1/2", "x" * 200]
)
def test_bad_references_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_ref(bad)


@given(st.text(min_size=1, max_size=30).filter(lambda k: "=" not in k and k.strip()), st.text())
def test_tags_split_at_the_first_equals(key: str, value: str) -> None:
    assert parse_tag(f"{key}={value}") == (key.strip(), value)


@pytest.mark.parametrize("bad", ["novalue", "=v", " =v"])
def test_bad_tags_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_tag(bad)
