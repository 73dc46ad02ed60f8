"""backup --resume of an encrypted archive (docs/FORMAT.md §11.4, §11.5): the dead writer's
file is opened with the same key, its kept members are opened (tags checked), and the rest is
sealed under a new nonce epoch that was made durable on the file first. The dead writer's file
is a prefix of a finished archive with the sealing state a writer killed while sealing chunks
leaves (user.dsbackup.sealing = writing)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.archive import crypto
from dsbackup.archive import format as fmt
from dsbackup.archive.crypto import KeyMaterial
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import verify_archive
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.errors import ArchiveError, WrongKeyError
from dsbackup.storage import resumestate
from tests.support.deadwriter import dead_writer_file
from tests.support.nonces import no_nonce_reuse

CHUNK = 200
KEY = KeyMaterial(key=b"k" * 32)


@pytest.fixture(autouse=True)
def small_scrypt(monkeypatch):
    monkeypatch.setenv(crypto.TEST_LOG2_N_ENV, "14")


@pytest.fixture
def store(tmp_path):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(12000))
    return src


def contents(uri: str) -> list[tuple[bytes, bytes]]:
    out = []
    with open_datastore(uri, readonly=True) as ds:
        for keys, values in ds.scan_batches():
            out += list(zip(keys, values))
    return out


def backup(store, final, key=KEY, **cfg):
    c = dict(chunk_size=CHUNK, workers=2, encryption=key)
    c.update(cfg)
    return BackupManager(BackupConfig(**c)).create_backup(f"lmdb:{store}", final)


def killed_copy(data: bytes, final: Path, *, sealing: bytes | None = resumestate.WRITING,
                epochs: list | None = None) -> Path:
    """A dead writer's temp file for `final` holding `data`, with its resume notes."""
    return dead_writer_file(final, data, sealing=sealing, epochs=epochs)


def member_end_of(archive: Path, chunk: int, key=KEY, catalog: bool = False) -> int:
    with ArchiveReader(archive, key=key) as r:
        m = r.index.catalog(chunk) if catalog else r.index.entry(chunk)
        return m.offset + m.length


def add_after(store, archive: Path, chunk: int) -> None:
    """Write a record right after chunk `chunk`'s last key (as if written after the kill)."""
    with ArchiveReader(archive, key=KEY) as r:
        key = r.index.entry(chunk).last_key + b"~late"
    with open_datastore(f"lmdb:{store}") as ds:
        ds.put_many([key], [b"late value"])


def test_resume_encrypted_verifies_and_restores(tmp_path, store):
    full = tmp_path / "full.tar.gz"
    backup(store, full)
    final = tmp_path / "a.tar.gz"
    tmp = killed_copy(full.read_bytes()[:member_end_of(full, 20) + 777], final)
    meta = backup(store, final, resume=True)
    assert meta.total_keys == 12000
    assert not tmp.exists() and not final.with_name(tmp.name).exists()
    report = BackupManager().verify_backup(final, deep=True, key=KEY)
    assert report.ok, report.errors
    assert verify_archive(final, deep=False).ok  # without the key: the sealed walk
    with ArchiveReader(final, key=KEY) as r:
        assert r.encrypted and r.summary["resumed"][0]["epoch"] == 1
        assert r.summary["resumed"][0]["from_seq"] == 21
        epochs = [r.index.entry(i).epoch for i in range(r.chunk_count)]
    assert epochs == [0] * 21 + [1] * (len(epochs) - 21)
    assert os.listxattr(final) == []  # the resume notes stay off the archive
    dst = tmp_path / "dst"
    BackupManager().restore_backup(final, f"lmdb:{dst}", key=KEY)
    assert contents(f"lmdb:{dst}") == contents(f"lmdb:{store}")


def test_resume_twice_never_reuses_a_nonce(tmp_path, store):
    """Killed, resumed and killed again, resumed: every (type, epoch, seq) the three runs left
    in the file at any time names one sealed byte string (no nonce reuse under the data key),
    and the index entries record the epochs the members open under."""
    full = tmp_path / "full.tar.gz"
    backup(store, full, include_metadata=True)
    first = full.read_bytes()[:member_end_of(full, 10, catalog=True) + 500]
    (tmp_path / "one").mkdir()
    mid = tmp_path / "one" / "a.tar.gz"  # the first resume, finished: its prefix is the
    killed_copy(first, mid)  # second kill's file
    add_after(store, full, 10)  # the rewritten chunks differ from the dead writer's
    backup(store, mid, resume=True, include_metadata=True)
    with ArchiveReader(mid, key=KEY) as r:
        history = r.summary["resumed"]
        assert [e["epoch"] for e in history] == [1] and history[0]["from_seq"] == 11
    second = mid.read_bytes()[:member_end_of(mid, 30, catalog=True) + 100]  # 31 torn
    (tmp_path / "two").mkdir()
    final = tmp_path / "two" / "a.tar.gz"
    killed_copy(second, final, epochs=history)
    add_after(store, mid, 30)
    backup(store, final, resume=True, include_metadata=True)
    assert BackupManager().verify_backup(final, deep=True, key=KEY).ok
    with ArchiveReader(final, key=KEY) as r:
        runs = r.summary["resumed"]
        assert [(e["epoch"], e["from_seq"]) for e in runs] == [(1, 11), (2, 31)]
        epochs = [r.index.entry(i).epoch for i in range(r.chunk_count)]
    assert epochs == [0] * 11 + [1] * 20 + [2] * (len(epochs) - 31)
    assert no_nonce_reuse([(first, 0), (second, 1), (final.read_bytes(), 2)], KEY) == {0, 1, 2}
    dst = tmp_path / "dst"
    BackupManager().restore_backup(final, f"lmdb:{dst}", key=KEY)
    assert contents(f"lmdb:{dst}") == contents(f"lmdb:{store}")


def test_wrong_key_or_no_key_is_refused_and_the_file_untouched(tmp_path, store):
    full = tmp_path / "full.tar.gz"
    backup(store, full)
    final = tmp_path / "a.tar.gz"
    tmp = killed_copy(full.read_bytes()[:member_end_of(full, 5) + 50], final)
    before = tmp.read_bytes(), os.listxattr(tmp)
    with pytest.raises(WrongKeyError, match="wrong passphrase or key"):
        backup(store, final, key=KeyMaterial(key=b"x" * 32), resume=True)
    with pytest.raises(WrongKeyError, match="wrong passphrase or key"):
        backup(store, final, key=KeyMaterial(passphrase=b"p"), resume=True)
    with pytest.raises(ArchiveError, match="is an encrypted archive; give --encrypt"):
        backup(store, final, key=None, resume=True)
    assert (tmp.read_bytes(), os.listxattr(tmp)) == before and not final.exists()
    backup(store, final, resume=True)
    assert BackupManager().verify_backup(final, deep=True, key=KEY).ok


@pytest.mark.parametrize("sealing,message", [
    (None, "has no sealing state"),
    (resumestate.FINISHING, "killed while writing the index"),
])
def test_unknown_or_finishing_sealing_state_is_refused(tmp_path, store, sealing, message):
    full = tmp_path / "full.tar.gz"
    backup(store, full)
    final = tmp_path / "a.tar.gz"
    tmp = killed_copy(full.read_bytes()[:member_end_of(full, 5) + 50], final, sealing=sealing)
    before = tmp.read_bytes()
    with pytest.raises(ArchiveError, match=f"cannot resume .*{message}"):
        backup(store, final, resume=True)
    assert tmp.read_bytes() == before


def test_without_user_xattrs_encrypted_resume_is_refused(tmp_path, store, monkeypatch):
    """A filesystem that keeps no user extended attributes: the writer cannot record its
    sealing state, so the temp file it leaves is not resumable (refused, not risked)."""
    def unsupported(*a, **k):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    for name in ("setxattr", "getxattr", "removexattr"):
        monkeypatch.setattr(os, name, unsupported)
    full = tmp_path / "full.tar.gz"
    backup(store, full)  # the backup itself works
    assert BackupManager().verify_backup(full, deep=True, key=KEY).ok
    final = tmp_path / "a.tar.gz"
    tmp = dead_writer_file(final, full.read_bytes()[:member_end_of(full, 5) + 50])
    with pytest.raises(ArchiveError, match="has no sealing state"):
        backup(store, final, resume=True)
    assert tmp.exists()


def test_a_writer_marks_finishing_before_it_seals_the_index(tmp_path, store, monkeypatch):
    from dsbackup.archive.writer import ArchiveWriter

    seen = []
    real = ArchiveWriter._write_data_member

    def spy(self, mtype, *a, **k):
        if mtype == fmt.TYPE_INDEX:
            seen.append(resumestate.sealing(self._sink._fd))
        return real(self, mtype, *a, **k)

    monkeypatch.setattr(ArchiveWriter, "_write_data_member", spy)
    try:
        os.setxattr(tmp_path, "user.probe", b"1")
    except OSError:
        pytest.skip("no user extended attributes on this filesystem")
    backup(store, tmp_path / "a.tar.gz")
    assert seen == [resumestate.FINISHING]


def test_a_kept_member_is_opened_under_its_runs_epoch(tmp_path, store):
    """The rescan opens each kept chunk under the epoch the resume history gives its seq: a
    member whose tag fails there (here: the history says run 1 wrote from chunk 8, but the
    bytes are run 0's) is cut with everything after it, and the new run takes epoch 2."""
    full = tmp_path / "full.tar.gz"
    backup(store, full)
    final = tmp_path / "a.tar.gz"
    killed_copy(full.read_bytes()[:member_end_of(full, 20)], final,
                epochs=[{"epoch": 1, "from_seq": 8, "snapshot": None}])
    backup(store, final, resume=True)
    assert BackupManager().verify_backup(final, deep=True, key=KEY).ok
    with ArchiveReader(final, key=KEY) as r:
        assert [(e["epoch"], e["from_seq"]) for e in r.summary["resumed"]] == [(1, 8), (2, 8)]
        epochs = [r.index.entry(i).epoch for i in range(r.chunk_count)]
    assert epochs == [0] * 8 + [2] * (len(epochs) - 8)


def test_a_damaged_resume_history_is_refused(tmp_path, store):
    full = tmp_path / "full.tar.gz"
    backup(store, full)
    final = tmp_path / "a.tar.gz"
    tmp = killed_copy(full.read_bytes()[:member_end_of(full, 5)], final,
                      epochs=[{"epoch": 2, "from_seq": 1}, {"epoch": 1, "from_seq": 3}])
    with pytest.raises(ArchiveError, match="its resume history .* is damaged"):
        backup(store, final, resume=True)
    assert tmp.exists()


@pytest.mark.parametrize("key", [KEY, None], ids=["encrypted", "plain"])
def test_a_whole_archive_in_the_temp_file_is_checked_and_put_in_place(tmp_path, store, key):
    """Killed after its trailer (while the archive was checked before the rename): the file
    is an archive already; the resume checks it and puts it in place byte for byte, even for
    an encrypted one marked `finishing`."""
    full = tmp_path / "full.tar.gz"
    backup(store, full, key=key)
    final = tmp_path / "a.tar.gz"
    tmp = killed_copy(full.read_bytes(), final,
                      sealing=resumestate.FINISHING if key else None)
    with pytest.raises(ArchiveError, match="cannot resume .*compression_level"):
        backup(store, final, key=key, resume=True, compression_level=6)
    assert tmp.exists() and not final.exists()
    meta = backup(store, final, key=key, resume=True)
    assert final.read_bytes() == full.read_bytes() and not tmp.exists()
    assert meta.total_keys == 12000 and os.listxattr(final) == []
    assert BackupManager().verify_backup(final, deep=True, key=key).ok


def test_a_resumed_encrypted_file_is_synced_early_more_often(tmp_path, store, monkeypatch):
    """Like a new one (tests/archive/test_writer_encrypted.py): the `finishing` fsync before
    the index is on the critical path, so early syncs run every SEALING_SYNC_STEP."""
    from dsbackup.archive.writer import ArchiveWriter
    from dsbackup.storage.writeback import SEALING_SYNC_STEP

    full = tmp_path / "full.tar.gz"
    backup(store, full)
    final = tmp_path / "a.tar.gz"
    killed_copy(full.read_bytes()[:member_end_of(full, 20) + 777], final)
    seen = []
    real = ArchiveWriter._finishing

    def spy(self):
        seen.append((type(self._sink).__name__, self._sink._writeback.sync_step))
        return real(self)

    monkeypatch.setattr(ArchiveWriter, "_finishing", spy)
    backup(store, final, resume=True)
    assert seen == [("ResumedSink", SEALING_SYNC_STEP)]
