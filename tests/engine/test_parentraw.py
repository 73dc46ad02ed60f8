"""engine/parentraw.py: the raw bytes of parent chunks, read or from the parent's total."""

from __future__ import annotations

import pytest

from dsbackup import datasets
from dsbackup._ext.framing import scan_payload
from dsbackup.archive.reader import ArchiveReader
from dsbackup.engine import parentraw
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    d = tmp_path_factory.mktemp("parentraw")
    datasets.write_lmdb(str(d / "src"), datasets.iter_small(3000))
    out = d / "p.tar.gz"
    BackupManager(BackupConfig(chunk_size=50, workers=2)).create_backup(f"lmdb:{d / 'src'}",
                                                                        out)
    with ArchiveReader(out) as r:
        raws = [scan_payload(r.read_chunk(i)).raw_bytes for i in range(r.chunk_count)]
    return out, raws


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_raw_bytes_of_reads_the_fewer_chunks(parent, monkeypatch, share):
    path, raws = parent
    n = len(raws)
    wanted = [j for j in range(n) if (j * 7919) % 100 < share * 100]
    known = [j for j in range(n) if j not in wanted][: n // 4]
    read: list[int] = []
    real = parentraw._read
    monkeypatch.setattr(parentraw, "_read", lambda p, s, t: read.extend(s) or real(p, s, t))
    with ArchiveReader(path) as r:
        got = parentraw.raw_bytes_of(r, parentraw.marks(n, wanted),
                                     known=parentraw.marks(n, known),
                                     known_raw=sum(raws[j] for j in known), threads=2)
    assert got == sum(raws[j] for j in wanted)
    assert len(read) == min(len(wanted), n - len(wanted) - len(known))


def test_without_a_total_the_wanted_chunks_are_read(parent, monkeypatch):
    path, raws = parent
    n = len(raws)
    with ArchiveReader(path) as r:
        monkeypatch.setattr(type(r), "summary", property(lambda self: {}))
        assert parentraw.raw_bytes_of(r, parentraw.marks(n, range(n - 3))) == sum(raws[:-3])
        assert parentraw.raw_bytes_of(r, parentraw.marks(n)) == 0
