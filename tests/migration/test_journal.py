"""The append-only journal and the version stamp."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsbackup.migration.journal import Journal, JournalCorrupt, read_stamp, write_stamp


def fill(j: Journal) -> None:
    j.append({"t": "begin", "plan": "p", "version": "1", "digest": "d"})
    j.append({"t": "checkpoint", "step": 0, "id": "a", "phase": "copy", "last": "2f61",
              "counts": {"records": 5}})
    j.append({"t": "step_done", "step": 0, "id": "a", "result": {"records": 9}})
    j.append({"t": "checkpoint", "step": 1, "id": "b", "phase": "stage", "last": "2f62",
              "counts": {"records": 1}})
    j.close()


def test_state_round_trip(tmp_path: Path) -> None:
    j = Journal(tmp_path / "s" / "p.journal")
    assert not j.read().started
    fill(j)
    st = j.read()
    assert st.started and st.begin["digest"] == "d"
    assert st.steps_done[0]["result"]["records"] == 9
    assert st.checkpoint["step"] == 1 and st.checkpoint["last"] == "2f62"
    assert not st.done and st.records == 4


def test_torn_last_line_is_ignored_and_cut_before_appending(tmp_path: Path) -> None:
    j = Journal(tmp_path / "p.journal")
    fill(j)
    with open(j.path, "ab") as f:
        f.write(b'1234abcd {"t":"checkpoint","st')  # a kill in the middle of an append
    st = j.read()
    assert st.checkpoint["step"] == 1
    j.open()
    j.append({"t": "done"})
    j.close()
    assert j.read().done
    assert b"checkpoint\",\"st" not in j.path.read_bytes()


@pytest.mark.parametrize("damage", [
    lambda b: b.replace(b'"records":9', b'"records":8'),     # bit rot inside a record
    lambda b: b"garbage line\n" + b,                          # a foreign line
    lambda b: b.replace(b"begin", b"begun"),                  # checksum mismatch
    lambda b: b.split(b"\n", 1)[1],                           # records without a begin
])
def test_corruption_stops_with_a_clear_error(tmp_path: Path, damage) -> None:
    j = Journal(tmp_path / "p.journal")
    fill(j)
    j.path.write_bytes(damage(j.path.read_bytes()))
    with pytest.raises(JournalCorrupt, match="p.journal"):
        j.read()


def test_stamp_is_atomic_json(tmp_path: Path) -> None:
    p = tmp_path / "d" / "p.version"
    assert read_stamp(p) is None
    write_stamp(p, {"plan_id": "p", "version": "2"})
    assert read_stamp(p) == {"plan_id": "p", "version": "2"}
    assert not list(p.parent.glob("*.tmp"))


def test_retire_moves_the_journal_aside(tmp_path: Path) -> None:
    j = Journal(tmp_path / "p.journal")
    fill(j)
    dest = j.retire("rolled-back")
    assert dest is not None and dest.exists() and not j.path.exists()
    assert not j.read().started
