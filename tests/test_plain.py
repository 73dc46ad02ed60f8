"""dsbackup._plain: the value classes keep what their dataclasses gave them."""

from __future__ import annotations

import copy
import pickle
from datetime import datetime, timezone

import pytest

from dsbackup._plain import asdict, fields, replace
from dsbackup.archive.index import ChunkEntry
from dsbackup.archive.verify import VerifyReport
from dsbackup.metadata import BackupMetadata, BackupStatistics, RestoreResult
from dsbackup.storage.location import S3Location


def _entry(**kw: object) -> ChunkEntry:
    args = dict(seq=1, offset=2, length=3, payload_len=4, records=5, payload_xxh3=6,
                member_xxh3=7, keys_xxh3=8, first_key=b"/a", last_key=b"/b")
    return ChunkEntry(**{**args, **kw})  # type: ignore[arg-type]


def test_a_frozen_record_compares_hashes_and_refuses_assignment():
    e = _entry()
    assert e == _entry() and hash(e) == hash(_entry()) and e != _entry(epoch=1)
    assert (e.flags, e.epoch) == (0, 0)
    assert e != (1, 2, 3)  # another class: never equal
    with pytest.raises(AttributeError, match="cannot assign to field 'seq'"):
        e.seq = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        e.other = 1  # type: ignore[attr-defined]
    assert not hasattr(e, "__dict__")
    assert repr(e).startswith("ChunkEntry(seq=1, offset=2, ") and "first_key=b'/a'" in repr(e)
    assert pickle.loads(pickle.dumps(e)) == e and copy.deepcopy(e) == e


def test_replace_and_fields():
    e = _entry()
    r = replace(e, payload_xxh3=99)
    assert r.payload_xxh3 == 99 and r.seq == 1 and e.payload_xxh3 == 6
    with pytest.raises(TypeError, match="no field 'nosuch'"):
        replace(e, nosuch=1)
    assert fields(ChunkEntry)[:2] == ("seq", "offset") and fields(e)[-1] == "epoch"


def test_s3_locations_sort_by_bucket_then_key():
    locs = [S3Location("b", "a"), S3Location("a", "z"), S3Location("a")]
    assert sorted(locs) == [S3Location("a"), S3Location("a", "z"), S3Location("b", "a")]
    assert S3Location("a") <= S3Location("a") and S3Location("b") > S3Location("a", "z")
    assert {S3Location("a", "k"): 1}[S3Location("a", "k")] == 1
    with pytest.raises(TypeError):
        _ = S3Location("a") < "s3://a/"


def test_mutable_records_get_fresh_defaults_and_no_hash():
    a, b = VerifyReport("x"), VerifyReport("x")
    a.errors.append("bad")
    assert b.errors == [] and a != b and VerifyReport("x") == b
    with pytest.raises(TypeError):
        hash(b)
    assert BackupStatistics().skipped_files is not BackupStatistics().skipped_files
    r = RestoreResult("a", "t", records_written=3)
    r.chunks = 2
    assert pickle.loads(pickle.dumps(r)) == r


def test_asdict_copies_nested_records_and_containers():
    meta = BackupMetadata("p", 1, datetime(2026, 1, 1, tzinfo=timezone.utc), 1, 2, 3, 1, "f",
                          {"codec": "deflate"}, {}, {}, BackupStatistics(skipped_files=["x"]))
    d = asdict(meta)
    assert d["statistics"]["skipped_files"] == ["x"] and d["compression"] == {"codec": "deflate"}
    d["statistics"]["skipped_files"].append("y")
    d["compression"]["codec"] = "zstd"
    assert meta.statistics.skipped_files == ["x"] and meta.compression["codec"] == "deflate"
    assert list(d) == list(fields(BackupMetadata))
    assert meta.to_json()["statistics"]["records_per_s"] == 0.0
