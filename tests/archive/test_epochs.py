"""Which run of a resumed backup wrote a chunk (docs/FORMAT.md §11.4, §11.5)."""

from __future__ import annotations

import pytest

from dsbackup.archive.epochs import MAX_EPOCH, epoch_at, resumed_runs
from dsbackup.errors import IntegrityError


def test_the_last_run_in_list_order_whose_from_seq_is_at_or_below_wins():
    runs = [(1, 100), (2, 50), (3, 80)]  # run 2 cut back below run 1's start
    assert [epoch_at(runs, s) for s in (0, 49, 50, 79, 80, 99, 100, 500)] == [
        0, 0, 2, 2, 3, 3, 3, 3]
    assert epoch_at([], 7) == 0
    assert epoch_at([(1, 0)], 0) == 1  # resumed from the start: everything is run 1's


def test_resumed_runs_reads_the_summary_list():
    summary = {"resumed": [{"epoch": 1, "from_seq": 4, "snapshot": None},
                           {"epoch": 2, "from_seq": 9, "snapshot": 17}]}
    assert resumed_runs(summary, "a") == [(1, 4), (2, 9)]
    assert resumed_runs({}, "a") == []


@pytest.mark.parametrize("bad", [
    "x", [1], [{"epoch": 1}], [{"epoch": 0, "from_seq": 1}],
    [{"epoch": 2, "from_seq": 1}, {"epoch": 2, "from_seq": 3}],
    [{"epoch": MAX_EPOCH + 1, "from_seq": 1}], [{"epoch": 1, "from_seq": -1}],
    [{"epoch": True, "from_seq": 1}],
])
def test_a_malformed_list_is_damage(bad):
    with pytest.raises(IntegrityError, match="'resumed' list is malformed"):
        resumed_runs({"resumed": bad}, "a")
