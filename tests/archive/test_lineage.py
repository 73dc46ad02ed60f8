"""archive/lineage.py: the walk down a chain by fingerprints shared by choose_parent and the
scheduler (the file-based helpers are tested with real archives in
tests/engine/test_incremental.py)."""

from __future__ import annotations

from dsbackup.archive.lineage import chain_depth


def test_a_full_backup_is_a_chain_of_one():
    assert chain_depth(None, {}, 5) == (1, None)


def test_the_walk_counts_ancestors_up_to_the_limit():
    parents = {"c": "b", "b": "a", "a": None}
    assert chain_depth("c", parents, 10) == (4, None)  # the archive, c, b, a
    assert chain_depth("c", parents, 2) == (2, "b")  # stopped by the limit
    assert chain_depth("c", parents, 1) == (1, "c")


def test_a_missing_ancestor_stops_the_walk_and_is_named():
    assert chain_depth("c", {"c": "gone"}, 10) == (2, "gone")
