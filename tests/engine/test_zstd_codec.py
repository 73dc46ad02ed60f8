"""backup --codec zstd (docs/FORMAT.md §11.6): chunks as zstd frames in stored blocks, flag bit
2; round trips at 1/2/4 workers, encryption, incremental chains and consolidation across
codecs, resume after SIGKILL and salvage, and the archive read by gzip, tar and zstd."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from dsbackup._ext.framing import scan_payload
from dsbackup.archive import crypto
from dsbackup.archive import format as fmt
from dsbackup.archive.consolidate import consolidate_archive
from dsbackup.archive.crypto import KeyMaterial
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.salvage import salvage
from dsbackup.archive.verify import verify_archive
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.errors import ArchiveError, ConfigError
from tests.support.deadwriter import sigkill_when_temp_over, temp_files

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(autouse=True)
def parallel_even_for_small_stores(monkeypatch):
    monkeypatch.setattr("dsbackup.engine.backup.PARALLEL_MIN_BYTES", 0)


def records(n: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """Keys valid in every backend (flatfs: base32), compressible values."""
    rng = random.Random(seed)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    words = [bytes(rng.choice(alphabet) for _ in range(6)) for _ in range(200)]
    recs = {}
    while len(recs) < n:
        name = bytes(rng.choice(alphabet) for _ in range(rng.randrange(10, 20)))
        recs[b"/" + name] = b" ".join(rng.choice(words) for _ in range(rng.randrange(0, 400)))
    return sorted(recs.items())


def make_store(tmp_path: Path, kind: str, recs, name: str = "src") -> str:
    uri = f"{kind}:{tmp_path / name}"
    ds = open_datastore(uri, sync=False)
    ds.put_many([k for k, _ in recs], [v for _, v in recs])
    ds.close()
    return uri


def contents(uri: str) -> list[tuple[bytes, bytes]]:
    with open_datastore(uri, readonly=True) as ds:
        out = []
        for keys, values in ds.scan_batches():
            out += list(zip(keys, values))
        return out


def member_bytes(path: Path) -> list[bytes]:
    data = path.read_bytes()
    with ArchiveReader(path) as r:
        return [data[e.offset:e.offset + e.length] for e in r.index.entries()]


@pytest.mark.parametrize("kind", ["lmdb", "flatfs"])
def test_round_trip_and_identical_members_for_1_2_4_workers(tmp_path, kind):
    recs = records(3000, seed=1)
    uri = make_store(tmp_path, kind, recs)
    members = []
    for w in (1, 2, 4):
        out = tmp_path / f"w{w}.tar.gz"
        meta = BackupManager(BackupConfig(codec="zstd", workers=w, chunk_size=40,
                                          chunk_max_bytes=64 << 10, include_metadata=True)
                             ).create_backup(uri, out)
        assert meta.total_keys == len(recs)
        assert meta.compression["codec"] == "zstd"
        with ArchiveReader(out) as r:
            assert r.version == 2 and r.flags == fmt.FLAG_ZSTD and r.codec == "zstd"
            assert r.manifest["settings"]["codec"] == "zstd"
            assert r.manifest["settings"]["engine"] == "zstd-1"
        members.append(member_bytes(out))
    assert len(members[0]) > 20
    assert members[0] == members[1] == members[2]
    for w in (1, 4):
        assert verify_archive(tmp_path / f"w{w}.tar.gz", deep=True).ok
        assert verify_archive(tmp_path / f"w{w}.tar.gz", deep=False).ok
    dst = f"{kind}:{tmp_path / 'dst'}"
    BackupManager().restore_backup(tmp_path / "w2.tar.gz", dst)
    assert contents(dst) == recs


def test_gzip_stays_version_1_and_the_codec_changes_only_chunk_members(tmp_path):
    uri = make_store(tmp_path, "lmdb", records(800, seed=2))
    BackupManager(BackupConfig(workers=1, chunk_size=40)).create_backup(uri, tmp_path / "g")
    BackupManager(BackupConfig(workers=1, chunk_size=40, codec="zstd", compression_level=3)
                  ).create_backup(uri, tmp_path / "z")
    with ArchiveReader(tmp_path / "g") as g, ArchiveReader(tmp_path / "z") as z:
        assert (g.version, g.flags, g.codec) == (1, 0, "gzip")
        assert "codec" not in g.manifest["settings"]
        assert z.manifest["settings"]["engine"] == "zstd-3"
        assert [e.payload_xxh3 for e in g.index.entries()] == [
            e.payload_xxh3 for e in z.index.entries()]
        for i in range(z.chunk_count):
            assert bytes(z.read_chunk(i)) == bytes(g.read_chunk(i))
        raw = z.read_member(0)
        sub = fmt.parse_member_head(raw, "chunk 0")
        e = z.entry(0)
        # the subfield describes the frame, the index the payload
        assert sub.flags == fmt.FLAG_ZSTD and sub.data_len != e.payload_len
        assert raw[sub.deflate_offset + 5 + 512 + 5:][:4] == b"\x28\xb5\x2f\xfd"


def test_bad_codec_and_levels_are_config_errors():
    with pytest.raises(ConfigError, match="codec must be gzip or zstd"):
        BackupConfig(codec="zst")
    with pytest.raises(ConfigError, match="1-19 for codec zstd"):
        BackupConfig(codec="zstd", compression_level=20)
    with pytest.raises(ConfigError, match="1-19 for codec zstd"):
        BackupConfig(codec="zstd", compression_level=0)
    assert BackupConfig(codec="zstd", compression_level=19).chunk_level == 119
    assert BackupConfig(codec="zstd", encryption=KeyMaterial(key=b"k" * 32)).chunk_level == 201


def test_encrypted_zstd_round_trip(tmp_path):
    recs = records(1500, seed=3)
    uri = make_store(tmp_path, "lmdb", recs)
    key = KeyMaterial(key=b"k" * 32)
    out = tmp_path / "e.tar.gz"
    BackupManager(BackupConfig(codec="zstd", workers=2, chunk_size=40, encryption=key,
                               include_metadata=True)).create_backup(uri, out)
    with ArchiveReader(out, key=key) as r:
        assert r.flags == fmt.FLAG_ENCRYPTED | fmt.FLAG_ZSTD
    with crypto.using_key(key):
        assert verify_archive(out, deep=True, threads=2).ok
    dst = f"lmdb:{tmp_path / 'dst'}"
    BackupManager(BackupConfig(workers=2)).restore_backup(out, dst, key=key)
    assert contents(dst) == recs


def test_incremental_chain_mixing_codecs_and_consolidate(tmp_path):
    recs = dict(records(3000, seed=4))
    uri = make_store(tmp_path, "lmdb", sorted(recs.items()))
    base = dict(workers=2, chunk_size=20)
    BackupManager(BackupConfig(**base)).create_backup(uri, tmp_path / "full.tar.gz")
    rng = random.Random(9)
    ds = open_datastore(uri)
    for k in rng.sample(sorted(recs), 30):
        recs[k] = b"changed " + k
        ds.put(k, recs[k])
    ds.close()
    mgr = BackupManager(BackupConfig(codec="zstd", **base))
    mgr.create_backup(uri, tmp_path / "inc1.tar.gz", parent=tmp_path / "full.tar.gz")
    ds = open_datastore(uri)
    for k in rng.sample(sorted(recs), 30):
        recs[k] = b"again " + k
        ds.put(k, recs[k])
    ds.close()
    BackupManager(BackupConfig(**base)).create_backup(uri, tmp_path / "inc2.tar.gz",
                                                      parent=tmp_path / "inc1.tar.gz")
    expected = sorted(recs.items())
    with ArchiveReader(tmp_path / "inc1.tar.gz") as r:
        assert r.codec == "zstd" and r.is_incremental
        stored = [e for e in r.index.entries() if not e.in_parent]
        assert 0 < len(stored) < r.chunk_count
    with ArchiveReader(tmp_path / "inc2.tar.gz") as r:
        assert r.codec == "gzip"  # not inherited from the parent
    for name in ("inc1", "inc2"):
        assert verify_archive(tmp_path / f"{name}.tar.gz", deep=True).ok
        dst = f"lmdb:{tmp_path / ('dst-' + name)}"
        BackupManager().restore_backup(tmp_path / f"{name}.tar.gz", dst)
    assert contents(f"lmdb:{tmp_path / 'dst-inc2'}") == expected
    # consolidate: every chunk in the output's codec (the top archive's)
    for name, codec in (("inc2", "gzip"), ("inc1", "zstd")):
        out = tmp_path / f"cons-{name}.tar.gz"
        consolidate_archive(tmp_path / f"{name}.tar.gz", out)
        with ArchiveReader(out) as c:
            assert c.codec == codec and not any(e.in_parent for e in c.index.entries())
            for i in range(c.chunk_count):
                sub = fmt.parse_member_head(c.read_member(i), "m")
                assert sub.flags == (fmt.FLAG_ZSTD if codec == "zstd" else 0)
        assert verify_archive(out, deep=True).ok
    dst = f"lmdb:{tmp_path / 'dst-cons'}"
    BackupManager().restore_backup(tmp_path / "cons-inc2.tar.gz", dst)
    assert contents(dst) == expected


def test_gzip_tar_and_zstd_read_the_archive(tmp_path):
    if shutil.which("gzip") is None or shutil.which("tar") is None:
        pytest.skip("gzip or tar missing")
    recs = records(600, seed=5)
    uri = make_store(tmp_path, "lmdb", recs)
    out = tmp_path / "z.tar.gz"
    BackupManager(BackupConfig(codec="zstd", workers=1, chunk_size=30)).create_backup(uri, out)
    subprocess.run(["gzip", "-t", str(out)], check=True)
    names = subprocess.run(["tar", "-tzf", str(out)], check=True, capture_output=True,
                           text=True).stdout.split()
    assert "dsbackup/chunks/00000000" in names
    with tarfile.open(out) as tf, ArchiveReader(out) as r:
        frame = tf.extractfile("dsbackup/chunks/00000001").read()
        payload = bytes(r.read_chunk(1))
    assert frame[:4] == b"\x28\xb5\x2f\xfd"
    if shutil.which("zstd") is not None:
        got = subprocess.run(["zstd", "-d", "-c"], input=frame, check=True,
                             capture_output=True).stdout
        assert got == payload and scan_payload(got).record_count == r.entry(1).records


def test_resume_after_sigkill_of_a_zstd_backup(tmp_path):
    src = tmp_path / "src"
    recs = records(20000, seed=6)
    uri = make_store(tmp_path, "lmdb", recs)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(SRC))
    cmd = [sys.executable, "-m", "dsbackup", "backup", uri, str(out / "a.tar.gz"),
           "--codec", "zstd", "--workers", "1", "--chunk-size", "20", "--no-verify"]
    sigkill_when_temp_over(cmd, env, out, "a.tar.gz", 200_000)
    assert temp_files(out, "a.tar.gz")
    r = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resum" in r.stderr
    assert not temp_files(out, "a.tar.gz")
    with ArchiveReader(out / "a.tar.gz") as a:
        assert a.codec == "zstd" and a.summary.get("resumed")
    assert verify_archive(out / "a.tar.gz", deep=True).ok
    dst = f"lmdb:{tmp_path / 'dst'}"
    BackupManager().restore_backup(out / "a.tar.gz", dst)
    assert contents(dst) == recs
    assert src.exists()


def test_salvage_of_a_truncated_zstd_archive(tmp_path):
    recs = records(2000, seed=7)
    uri = make_store(tmp_path, "lmdb", recs)
    out = tmp_path / "z.tar.gz"
    BackupManager(BackupConfig(codec="zstd", workers=1, chunk_size=20)).create_backup(uri, out)
    with ArchiveReader(out) as r:
        e = r.entry(10)
        want = [(x.first_key, x.payload_xxh3, x.records) for x in r.index.entries()][:10]
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(out.read_bytes()[:e.offset + e.length // 2])
    rep = salvage(cut)
    assert [(c.first_key, c.payload_xxh3, c.records) for c in rep.chunks] == want
    got = []
    for c, payload in rep.iter_payloads():
        assert scan_payload(payload).record_count == c.records
        got.append(c.seq)
    assert got == list(range(10))
    assert rep.damaged and not rep.complete


def test_resume_with_the_other_codec_is_refused_and_the_file_kept(tmp_path):
    from tests.support.deadwriter import dead_writer_file

    uri = make_store(tmp_path, "lmdb", records(1500, seed=8))
    full = tmp_path / "full.tar.gz"
    BackupManager(BackupConfig(codec="zstd", workers=1, chunk_size=20)).create_backup(uri, full)
    with ArchiveReader(full) as r:
        e = r.entry(5)
    final = tmp_path / "a.tar.gz"
    tmp = dead_writer_file(final, full.read_bytes()[:e.offset + e.length])
    with pytest.raises(ArchiveError, match="cannot resume.*engine is \"zstd-1\" there"):
        BackupManager(BackupConfig(workers=1, chunk_size=20, resume=True)).create_backup(
            uri, final)
    assert tmp.exists() and not final.exists()
    meta = BackupManager(BackupConfig(codec="zstd", workers=1, chunk_size=20, resume=True)
                         ).create_backup(uri, final)
    assert meta.total_keys == 1500 and verify_archive(final, deep=True).ok


def test_resume_of_an_encrypted_zstd_backup(tmp_path, monkeypatch):
    from dsbackup.storage import resumestate
    from tests.support.deadwriter import dead_writer_file

    recs = records(2000, seed=10)
    uri = make_store(tmp_path, "lmdb", recs)
    key = KeyMaterial(key=b"k" * 32)
    cfg = dict(codec="zstd", workers=2, chunk_size=20, encryption=key, include_metadata=True)
    full = tmp_path / "full.tar.gz"
    BackupManager(BackupConfig(**cfg)).create_backup(uri, full)
    with ArchiveReader(full, key=key) as r:
        e = r.index.catalog(7)
    final = tmp_path / "a.tar.gz"
    dead_writer_file(final, full.read_bytes()[:e.offset + e.length + 100],
                     sealing=resumestate.WRITING)
    meta = BackupManager(BackupConfig(resume=True, **cfg)).create_backup(uri, final)
    assert meta.total_keys == len(recs)
    with ArchiveReader(final, key=key) as r:
        assert r.flags == fmt.FLAG_ENCRYPTED | fmt.FLAG_ZSTD
        assert r.summary["resumed"][0]["from_seq"] == 8
    with crypto.using_key(key):
        assert verify_archive(final, deep=True, threads=2).ok
    dst = f"lmdb:{tmp_path / 'dst'}"
    BackupManager(BackupConfig(workers=2)).restore_backup(final, dst, key=key)
    assert contents(dst) == recs


def test_cli_codec_and_level_errors_and_inspect(tmp_path):
    uri = make_store(tmp_path, "lmdb", records(300, seed=11))
    env = dict(os.environ, PYTHONPATH=str(SRC))

    def cli(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dsbackup", *a], env=env,
                              capture_output=True, text=True, timeout=300)

    out = tmp_path / "a.tar.gz"
    for args, msg in ((["--codec", "zst"], "invalid choice: 'zst'"),
                      (["--codec", "zstd", "--level", "20"], "1-19 for codec zstd, got 20"),
                      (["--codec", "zstd", "--level", "0"], "1-19 for codec zstd, got 0"),
                      (["--level", "12"], "must be 0-9, got 12"),
                      (["--codec", "zstd", "--format", "go"], "--format go has no zstd")):
        r = cli("backup", uri, str(out), *args)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and not out.exists()
    r = cli("backup", uri, str(out), "--codec", "zstd", "--level", "9")
    assert r.returncode == 0, r.stderr
    r = cli("inspect", str(out))
    assert r.returncode == 0 and "zstd level 9 (zstd-9)" in r.stdout


@pytest.mark.parametrize("level", [10, 19])
def test_zstd_levels_above_9_back_up_and_restore(tmp_path, level):
    """zstd's levels 10-19 are valid (§11.6); the archive's other members stay deflate at
    its default level, not at the zstd level (which deflate refuses)."""
    recs = records(300, seed=5)
    uri = make_store(tmp_path, "lmdb", recs)
    BackupManager(BackupConfig(workers=1, chunk_size=40, codec="zstd", compression_level=level)
                  ).create_backup(uri, tmp_path / "z")
    with ArchiveReader(tmp_path / "z") as z:
        assert z.codec == "zstd" and z.manifest["settings"]["engine"] == f"zstd-{level}"
    assert verify_archive(tmp_path / "z", deep=True).ok
    dst = f"lmdb:{tmp_path / 'dst'}"
    BackupManager().restore_backup(tmp_path / "z", dst)
    assert contents(dst) == recs
