"""Aliases instead of fixed stages: moves recorded append-only, rollback, archive, tags."""

from __future__ import annotations

import itertools

import pytest
from crucible_registry import Registry

from crucible_core.errors import ConfigError, Conflict, NotFound


def test_moves_are_recorded_with_who_when_why_and_the_previous_holder(three: Registry) -> None:
    three.set_alias("bigram", "production", 1, reason="first")
    three.set_alias("bigram", "production", 2, reason="better loss", actor="alice")
    three.set_alias("bigram", "staging", 3)
    assert three.resolve("bigram@production").version == 2
    assert three.model("bigram").aliases == {"production": 2, "staging": 3}
    assert three.version("bigram", 2).aliases == ["production"]
    history = three.history("bigram", "production")
    assert [(e.action, e.previous, e.version, e.reason) for e in history] == [
        ("set", None, 1, "first"),
        ("set", 1, 2, "better loss"),
    ]
    assert history[1].actor == "alice"
    assert history[0].actor == "tester"  # $CRUCIBLE_USER
    assert history[0].at <= history[1].at


def test_rollback_walks_back_through_the_moves_one_command_at_a_time(three: Registry) -> None:
    for v in (1, 2, 3):
        three.set_alias("bigram", "production", v)
    e = three.rollback("bigram", "production", reason="v3 regressed")
    assert (e.action, e.previous, e.version) == ("rollback", 3, 2)
    assert three.resolve("bigram@production").version == 2
    three.rollback("bigram", "production")
    assert three.resolve("bigram@production").version == 1
    with pytest.raises(Conflict, match="no earlier holder"):
        three.rollback("bigram", "production")
    assert three.resolve("bigram@production").version == 1
    three.set_alias("bigram", "production", 3)  # a new move after rollbacks is undone first
    three.rollback("bigram", "production")
    assert three.resolve("bigram@production").version == 1
    events = three.history("bigram", "production")
    assert [e.version for e in events] == [1, 2, 3, 2, 1, 3, 1]
    assert all(b.previous == a.version for a, b in itertools.pairwise(events))


def test_archived_versions_are_kept_but_never_aliased(three: Registry) -> None:
    three.set_alias("bigram", "production", 2)
    with pytest.raises(Conflict, match="holds production"):
        three.archive("bigram", 2)
    v1 = three.archive("bigram", 1, reason="superseded")
    assert v1.archived
    assert v1.archive_reason == "superseded"
    with pytest.raises(Conflict, match="archived"):
        three.set_alias("bigram", "production", 1)
    assert three.resolve("bigram@production").version == 2
    assert three.version("bigram", 1).artifacts  # kept
    three.set_alias("bigram", "production", 3)
    three.archive("bigram", 2)
    with pytest.raises(Conflict, match="archived"):
        three.rollback("bigram", "production")  # its previous holder is archived now
    assert three.resolve("bigram@production").version == 3


def test_a_move_expecting_a_stale_holder_is_refused(three: Registry) -> None:
    three.set_alias("bigram", "production", 1, expected=None)
    with pytest.raises(Conflict, match="holds version 1, not nothing") as info:
        three.set_alias("bigram", "production", 2, expected=None)
    assert info.value.details["current"] == 1
    three.set_alias("bigram", "production", 2, expected=1)
    with pytest.raises(Conflict, match="already holds version 2"):
        three.set_alias("bigram", "production", 2)
    assert len(three.history("bigram", "production")) == 2


def test_bad_aliases_and_unknown_targets(three: Registry) -> None:
    for bad in ("Production", "latest", "", "a b", "x" * 65):
        with pytest.raises(ConfigError):
            three.set_alias("bigram", bad, 1)
    with pytest.raises(NotFound, match="no version 9"):
        three.set_alias("bigram", "production", 9)
    with pytest.raises(NotFound, match="did you mean bigram"):
        three.set_alias("bigrams", "production", 1)
    with pytest.raises(NotFound, match="no alias"):
        three.rollback("bigram", "production")
    assert three.history("bigram") == []


def test_tags_on_names_and_versions(three: Registry) -> None:
    assert three.tag("bigram", {"owner": "nlp", "task": "dates"}) == {
        "owner": "nlp",
        "task": "dates",
    }
    assert three.tag("bigram", {"owner": "ml"}, remove=["task"]) == {"owner": "ml"}
    assert three.tag("bigram", {"eval": "passed"}, version=2) == {"eval": "passed"}
    assert three.model("bigram").tags == {"owner": "ml"}
    assert three.version("bigram", 2).tags == {"eval": "passed"}
    assert three.version("bigram", 1).tags == {}
    with pytest.raises(NotFound):
        three.tag("bigram", {"a": "b"}, version=8)


def test_an_alias_can_be_removed_and_a_rollback_gives_it_back(three: Registry) -> None:
    three.set_alias("bigram", "production", 2)
    with pytest.raises(Conflict, match="holds version 2, not version 1"):
        three.remove_alias("bigram", "production", expected=1)
    e = three.remove_alias("bigram", "production", reason="withdrawn", expected=2)
    assert (e.action, e.previous, e.version) == ("remove", 2, None)
    with pytest.raises(NotFound, match="no alias 'production'"):
        three.resolve("bigram@production")
    assert three.model("bigram").aliases == {}
    with pytest.raises(NotFound, match="nothing to remove"):
        three.remove_alias("bigram", "production")
    back = three.rollback("bigram", "production", reason="not withdrawn after all")
    assert (back.action, back.previous, back.version) == ("rollback", None, 2)
    assert three.resolve("bigram@production").version == 2
    assert [e.action for e in three.history("bigram", "production")] == [
        "set",
        "remove",
        "rollback",
    ]
    three.archive("bigram", 1)  # a removed alias no longer holds anything
