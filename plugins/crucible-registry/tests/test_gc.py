"""``gc``: archived versions holding no alias are forgotten and unpinned; nothing else is."""

from __future__ import annotations

import pytest
from crucible_registry import Registry

from crucible_core.errors import NotFound
from crucible_core.records import pins


def test_gc_forgets_archived_unaliased_versions_only_and_releases_their_pins(
    three: Registry,
) -> None:
    three.set_alias("bigram", "production", 3)
    three.tag("bigram", {"note": "x"}, version=1)
    three.record_eval("bigram", 1, {"a": 1.0}, suite="s")
    three.set_alias("bigram", "staging", 1)
    three.set_alias("bigram", "staging", 2)
    three.archive("bigram", 1, reason="old")
    sha1 = three.version("bigram", 1).artifacts[0].sha256
    assert pins.is_pinned(sha1)
    listed = three.gc()  # a dry run by default
    assert [(v.name, v.version) for v in listed] == [("bigram", 1)]
    assert three.has_version("bigram", 1)
    gone = three.gc(dry_run=False)
    assert [v.version for v in gone] == [1]
    assert not pins.is_pinned(sha1)
    assert pins.is_pinned(three.version("bigram", 3).artifacts[0].sha256)
    with pytest.raises(NotFound, match="its versions: 2, 3"):
        three.version("bigram", 1)
    assert [e.version for e in three.history("bigram", "staging")] == [1, 2]  # history kept
    assert three.gc(dry_run=False) == []
    assert three.model("bigram").versions == [2, 3]


def test_numbers_are_never_reused_after_gc(three: Registry) -> None:
    three.archive("bigram", 3)
    three.gc(dry_run=False)
    again = three.register("run-b", name="bigram", checkpoint="12")
    assert (again.version, again.existing) == (4, False)
    assert pins.is_pinned(again.artifacts[0].sha256)
