"""Encrypted archives (docs/FORMAT.md §11.4, docs/ENCRYPTION.md): round trips, no plaintext in
the file, tamper detection, wrong keys refused, determinism with a fixed data key."""

from __future__ import annotations

import gzip
import os
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.archive import crypto
from dsbackup.archive import format as fmt
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import verify_archive
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.errors import IntegrityError, KeyRequiredError, WrongKeyError

PASS = b"correct horse battery staple"
# the backends of the unencrypted round trips (tests/engine/test_backup.py)
BACKENDS = ["memory", "lmdb", "flatfs", "leveldb", "sqlite"]


@pytest.fixture(autouse=True)
def small_scrypt(monkeypatch):
    """The test-only scrypt setting (n = 2^14, the readers' minimum): fast tests."""
    monkeypatch.setenv(crypto.TEST_LOG2_N_ENV, "14")
    monkeypatch.setattr("dsbackup.engine.backup.PARALLEL_MIN_BYTES", 0)


def records_for(n: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    recs = {}
    while len(recs) < n:
        name = bytes(rng.choice(alphabet) for _ in range(rng.randrange(8, 20)))
        recs[b"/" + name] = rng.randbytes(rng.randrange(0, 3000))
    return sorted(recs.items())


def contents(ds) -> list[tuple[bytes, bytes]]:
    out = []
    for keys, values in ds.scan_batches():
        out += list(zip(keys, values))
    return out


def key() -> crypto.KeyMaterial:
    return crypto.KeyMaterial(passphrase=PASS)


def make_store(kind: str, tmp_path, name: str):
    if kind == "memory":
        return open_datastore("memory:")
    return open_datastore(f"{kind}:{tmp_path / name}")


@pytest.mark.parametrize("src_kind", BACKENDS)
def test_roundtrip_encrypted(tmp_path, src_kind):
    """Every backend pair of tests/engine/test_backup.py's round trips, encrypted: one
    encrypted backup per source kind, restored exactly into every destination kind."""
    records = records_for(150, seed=hash(src_kind) & 0xFFFF)
    src = make_store(src_kind, tmp_path, "src")
    src.put_many([k for k, _ in records], [v for _, v in records])
    mgr = BackupManager(BackupConfig(chunk_size=7, workers=2, include_metadata=True,
                                     encryption=key()))
    archive = tmp_path / "a.tar.gz"
    meta = mgr.create_backup(src, archive)
    src.close()
    assert meta.total_keys == len(records)
    with ArchiveReader(archive, key=key()) as r:
        assert r.encrypted and r.version == 2 and r.flags == fmt.FLAG_ENCRYPTED
    with crypto.using_key(key()):
        assert verify_archive(archive, deep=True, threads=2).ok
    for dst_kind in BACKENDS:
        dst = make_store(dst_kind, tmp_path, f"dst-{dst_kind}")
        res = BackupManager(BackupConfig(workers=2)).restore_backup(archive, dst, key=key())
        assert res.records_written == len(records), dst_kind
        assert contents(dst) == records, dst_kind
        dst.close()


def lmdb_archive(tmp_path, records, *, name="a.tar.gz", workers=2, material=..., **cfg):
    """An archive of an LMDB store; `material` None: not encrypted; default: PASS."""
    src = tmp_path / "src"
    if not src.exists():
        datasets.write_lmdb(str(src), iter(records))
    path = tmp_path / name
    BackupManager(BackupConfig(workers=workers, encryption=key() if material is ... else material,
                               **cfg)).create_backup(f"lmdb:{src}", path)
    return path


def test_no_plaintext_in_the_file(tmp_path):
    rng = random.Random(7)
    markers = [rng.randbytes(16) for _ in range(1000)]
    records = sorted({b"/m/" + m.hex().encode() + b"/" + markers[i]: b"v" + markers[-1 - i]
                      * 3 for i, m in enumerate(markers)}.items())
    path = lmdb_archive(tmp_path, records, include_metadata=True, chunk_size=16,
                        compression_level=0)  # stored: plaintext would show as is
    blob = path.read_bytes()
    assert len(records) == 1000
    assert not any(m in blob for m in markers)
    assert not any(k in blob for k, _ in records)  # no key string of the store
    assert not any(k[3:35] in blob for k, _ in records)  # nor its hex part alone
    assert PASS not in blob  # (3-byte strings such as b"/m/" occur in random bytes by chance)
    assert b"lmdb:" not in blob and b"chunk_size" not in blob  # manifest and summary sealed


def test_tools_and_quick_verify_without_key(tmp_path):
    path = lmdb_archive(tmp_path, records_for(400), chunk_size=20, include_metadata=True)
    assert subprocess.run(["gzip", "-t", str(path)]).returncode == 0
    listing = subprocess.run(["tar", "-tzf", str(path)], capture_output=True, text=True)
    assert listing.returncode == 0
    names = listing.stdout.split()
    assert names[:2] == ["dsbackup/key", "dsbackup/manifest.json"]
    assert "dsbackup/chunks/00000000" in names and names[-1] == "dsbackup/summary.json"
    with tarfile.open(path) as t:
        assert t.getnames() == names
    assert gzip.decompress(path.read_bytes()).endswith(bytes(1024))
    report = verify_archive(path, deep=False)
    assert report.ok and report.mode == "quick-sealed" and report.checked_chunks > 5
    with pytest.raises(KeyRequiredError):
        verify_archive(path, deep=True)
    buf = bytearray(path.read_bytes())
    with ArchiveReader(path, key=key()) as r:
        off = r.entry(3).offset + r.entry(3).length // 2
    buf[off] ^= 0x10
    path.write_bytes(bytes(buf))
    assert not verify_archive(path, deep=False).ok


def test_wrong_or_missing_key_is_refused(tmp_path):
    path = lmdb_archive(tmp_path, records_for(50))
    with pytest.raises(KeyRequiredError, match="archive is encrypted: give --passphrase-file"):
        ArchiveReader(path)
    for _ in range(20):
        bad = crypto.KeyMaterial(passphrase=os.urandom(12))
        with pytest.raises(WrongKeyError, match="wrong passphrase or key"):
            ArchiveReader(path, key=bad)
    with pytest.raises(WrongKeyError):
        ArchiveReader(path, key=crypto.KeyMaterial(key=os.urandom(32)))
    with pytest.raises(WrongKeyError):
        BackupManager().restore_backup(path, f"lmdb:{tmp_path / 'dst'}",
                                       key=crypto.KeyMaterial(passphrase=b"nope"))
    assert not (tmp_path / "dst").exists()


def test_wrong_key_refused_in_constant_work(tmp_path, monkeypatch):
    """A wrong passphrase is refused after the same work whatever the archive's size: one
    scrypt derivation, the trailer and key header read (no chunk, index or catalog)."""
    (tmp_path / "s").mkdir()
    (tmp_path / "b").mkdir()
    small = lmdb_archive(tmp_path / "s", records_for(10))
    big = lmdb_archive(tmp_path / "b", records_for(2000), chunk_size=10, include_metadata=True)
    assert big.stat().st_size > 20 * small.stat().st_size
    derivations = []
    from cryptography.hazmat.primitives.kdf import scrypt as scrypt_mod

    real_scrypt = scrypt_mod.Scrypt  # crypto imports it where it derives (lazily)

    def counting_scrypt(**kw):
        derivations.append(1)
        return real_scrypt(**kw)

    monkeypatch.setattr(scrypt_mod, "Scrypt", counting_scrypt)
    reads: list[int] = []
    real_pread = ArchiveReader.pread
    monkeypatch.setattr(ArchiveReader, "pread",
                        lambda self, off, n: reads.append(n) or real_pread(self, off, n))
    work = []
    for path in (small, big):
        for _ in range(20):  # 100% refused
            del derivations[:], reads[:]
            with pytest.raises(WrongKeyError, match="wrong passphrase or key"):
                ArchiveReader(path, key=crypto.KeyMaterial(passphrase=os.urandom(16)))
            work.append((len(derivations), len(reads), sum(reads)))
    assert set(work) == {work[0]} and work[0][0] == 1, work  # the same for both archives
    assert work[0][2] < 4096  # trailer and key header only


def test_key_file_roundtrip(tmp_path):
    kf = tmp_path / "k.key"
    crypto.write_key_file(kf)
    assert kf.stat().st_mode & 0o777 == 0o600
    records = records_for(80)
    path = lmdb_archive(tmp_path, records, material=crypto.load_key_file(kf))
    with ArchiveReader(path, key=crypto.load_key_file(kf)) as r:
        assert r.key_header["kdf"] == {"name": "raw"}
    with pytest.raises(WrongKeyError):
        ArchiveReader(path, key=key())


def _regions(path, material) -> list[tuple[int, int, str, int | None]]:
    """(start, end, part, chunk) of every member of an encrypted archive and its trailer."""
    size = path.stat().st_size
    with ArchiveReader(path, key=material) as r:
        t = r.trailer
        out = [(0, r.base, "key", None), (r.base, r.manifest_end, "manifest", None)]
        for i in range(r.chunk_count):
            e, c = r.entry(i), r.index.catalog(i)
            out += [(e.offset, e.offset + e.length, "chunk", i),
                    (c.offset, c.offset + c.length, "catalog", i)]
        out += [(t.index_offset, t.index_offset + t.index_length, "index", None),
                (t.summary_offset, t.summary_offset + t.summary_length, "summary", None),
                (t.summary_offset + t.summary_length, size, "trailer", None)]
    assert sorted(out) == out and all(a[1] == b[0] for a, b in zip(out, out[1:]))  # tiled
    return out


def test_bit_flips_are_detected(tmp_path):
    """1,000 random single-bit flips over the whole file: every one found by a deep verify
    (exit 3: not ok, and not only a missing parent), naming the chunk whose member (chunk or
    catalog) holds the flip, or the part (key header, manifest, index, summary, trailer).
    In-process through the library: the CLI's exit 3 for damage is tested in
    tests/cli/test_encryption_cli.py."""
    path = lmdb_archive(tmp_path, records_for(120), chunk_size=8, include_metadata=True)
    good = path.read_bytes()
    material = key()
    regions = _regions(path, material)
    rng = random.Random(1000)
    hit: set[str] = set()
    for _ in range(1000):
        pos = rng.randrange(len(good))
        buf = bytearray(good)
        buf[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(buf))
        with crypto.using_key(material):
            report = verify_archive(path, deep=True, threads=1)
        assert not report.ok and report.bad_parts != ["parent"], pos  # exit 3
        _a, _b, part, chunk = next(x for x in regions if x[0] <= pos < x[1])
        hit.add(part)
        if chunk is not None:
            assert report.bad_chunks == [chunk], (pos, part, report.errors)
        else:
            assert report.bad_parts == [part] and not report.bad_chunks, (pos, report.errors)
    assert hit == {"key", "manifest", "chunk", "catalog", "index", "summary", "trailer"}


def test_members_identical_for_any_worker_count(tmp_path, monkeypatch):
    fixed = {crypto.ID_BYTES: b"\x11" * 16, crypto.KEY_BYTES: b"\x22" * 32,
             crypto.SALT_BYTES: b"\x33" * 16, crypto.NONCE_BYTES: b"\x44" * 12}
    monkeypatch.setattr(crypto, "_random", lambda n: fixed[n])
    records = records_for(600)
    members = []
    for w in (1, 2, 4):
        path = lmdb_archive(tmp_path, records, name=f"w{w}.tar.gz", workers=w, chunk_size=20,
                            include_metadata=True)
        with ArchiveReader(path, key=key()) as r:
            members.append([(r.read_member(i), r.read_catalog_member(i))
                            for i in range(r.chunk_count)])
    assert members[0] == members[1] == members[2] and len(members[0]) > 5


def test_incremental_chain_of_five(tmp_path):
    rng = random.Random(3)
    state = dict(records_for(300))
    mgr = BackupManager(BackupConfig(workers=2, chunk_size=10, encryption=key()))
    parent = None
    states = []
    for n in range(5):
        for k in rng.sample(sorted(state), 10):
            state[k] = rng.randbytes(50)
        del state[rng.choice(sorted(state))]
        state[b"/NEW" + bytes([65 + n])] = b"x" * n
        states.append(sorted(state.items()))
        src = tmp_path / f"src{n}"
        datasets.write_lmdb(str(src), iter(states[-1]))
        path = tmp_path / f"a{n}.tar.gz"
        mgr.create_backup(f"lmdb:{src}", path, parent=parent)
        parent = path
    with ArchiveReader(parent, key=key()) as r:
        assert r.summary["referenced_chunks"] > 0
    for n in range(5):  # every archive of the chain restores its own state exactly
        BackupManager().restore_backup(tmp_path / f"a{n}.tar.gz",
                                       f"lmdb:{tmp_path / f'dst{n}'}", key=key())
        with open_datastore(f"lmdb:{tmp_path / f'dst{n}'}", readonly=True) as ds:
            assert contents(ds) == states[n], n
    # one scrypt derivation unlocks the chain: every archive reuses the first salt
    salts = set()
    for n in range(5):
        with ArchiveReader(tmp_path / f"a{n}.tar.gz", key=key()) as r:
            salts.add(r.key_header["kdf"]["salt"])
    assert len(salts) == 1
    from dsbackup.archive.consolidate import consolidate_archive

    with crypto.using_key(key()):
        consolidate_archive(parent, tmp_path / "full.tar.gz")
        assert verify_archive(tmp_path / "full.tar.gz", deep=True).ok
    with ArchiveReader(tmp_path / "full.tar.gz", key=key()) as r:
        assert r.encrypted
    with pytest.raises(KeyRequiredError):
        BackupManager().restore_backup(parent, f"lmdb:{tmp_path / 'dst2'}")


def test_secrets_never_show(tmp_path):
    material = key()
    assert PASS.decode() not in repr(material) + str(material)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(material)
    cfg = BackupConfig(encryption=material)
    assert cfg.to_dict()["encryption"] == "scrypt" and PASS.decode() not in repr(cfg)
    path = lmdb_archive(tmp_path, records_for(20), material=material)
    with ArchiveReader(path, key=material) as r:
        assert "ArchiveCipher" in repr(r.cipher) and r.key_header["kdf"]["name"] == "scrypt"
    material.close()
    assert bytes(material._secret) == bytes(len(PASS))  # zeroed
    assert all(not any(k) for k in material._keks.values())
    # no command takes the passphrase as an argument (it would be in /proc/PID/cmdline)
    from dsbackup.cli import main

    for mod in main._command_modules():
        import argparse

        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        opts = {o for a in p._actions for o in a.option_strings}
        assert not opts & {"--passphrase", "--key", "--password"}, mod.COMMAND


def test_unencrypted_archives_unchanged(tmp_path):
    """Without encryption the writer is byte-for-byte the version-1 writer (the flags and the
    key header appear only with a key)."""
    records = records_for(100)
    p1 = lmdb_archive(tmp_path, records, name="a.tar.gz", material=None)
    with ArchiveReader(p1) as r:
        assert r.version == 1 and r.flags == 0 and not r.encrypted and r.base == 0


@pytest.mark.parametrize("kdf", [
    {"name": "scrypt", "salt": "00" * 16, "n": 1 << 23, "r": 8, "p": 1},  # too much memory
    {"name": "scrypt", "salt": "00" * 16, "n": 1 << 10, "r": 8, "p": 1},  # too weak
    {"name": "scrypt", "salt": "00" * 16, "n": 3 << 14, "r": 8, "p": 1},  # not a power of 2
    {"name": "scrypt", "salt": "00" * 16, "n": 1 << 14, "r": 64, "p": 2},  # r·p > 64
    {"name": "scrypt", "salt": "00" * 8, "n": 1 << 14, "r": 8, "p": 1},  # short salt
    {"name": "argon9"},
    # numbers a writer never writes: Infinity was 'internal error: OverflowError' (exit 2)
    {"name": "scrypt", "salt": "00" * 16, "n": float("inf"), "r": 8, "p": 1},
    {"name": "scrypt", "salt": "00" * 16, "n": 16384.5, "r": 8, "p": 1},
    {"name": "scrypt", "salt": "00" * 16, "n": 16384, "r": True, "p": 1},
])
def test_hostile_kdf_parameters_are_damage(kdf):
    from dsbackup.errors import IntegrityError

    with pytest.raises(IntegrityError):
        key().kek(kdf, "a.tar.gz")


def test_key_and_passphrase_files(tmp_path):
    (tmp_path / "p").write_bytes(PASS + b"\r\n")
    assert bytes(crypto.load_passphrase_file(tmp_path / "p")._secret) == PASS
    (tmp_path / "e").write_bytes(b"\n")
    from dsbackup.errors import ConfigError

    with pytest.raises(ConfigError, match="is empty"):
        crypto.load_passphrase_file(tmp_path / "e")
    (tmp_path / "k").write_bytes(b"\x01" * 32)
    assert crypto.load_key_file(tmp_path / "k").kind == "raw"
    (tmp_path / "k").write_bytes(b"ab" * 32 + b"\n")
    assert bytes(crypto.load_key_file(tmp_path / "k")._secret) == b"\xab" * 32
    (tmp_path / "k").write_bytes(b"short")
    with pytest.raises(ConfigError, match="32 raw bytes"):
        crypto.load_key_file(tmp_path / "k")
    with pytest.raises(ConfigError, match="cannot read"):
        crypto.load_key_file(tmp_path / "missing")


def test_key_material_keeps_core_files_away(tmp_path):
    """A process that holds key material is not dumpable (no core file, no /proc reading by
    other processes of the user), and its secrets sit in MADV_DONTDUMP pages."""
    code = (
        "import ctypes\n"
        "from dsbackup.archive import crypto\n"
        "libc = ctypes.CDLL(None)\n"
        "print(libc.prctl(3, 0, 0, 0, 0))\n"  # PR_GET_DUMPABLE
        "m = crypto.KeyMaterial(passphrase=b'pw')\n"
        "print(libc.prctl(3, 0, 0, 0, 0))\n"
        "a = ctypes.addressof(ctypes.c_char.from_buffer(m._secret))\n"
        "for line in open('/proc/self/smaps'):\n"
        "    head = line.split()[0]\n"
        "    if '-' in head and all(c in '0123456789abcdef-' for c in head):\n"
        "        lo, hi = (int(x, 16) for x in head.split('-'))\n"
        "        inside = lo <= a < hi\n"
        "    elif inside and line.startswith('VmFlags:'):\n"
        "        print('dd' in line.split())\n"
    )
    src = str(Path(crypto.__file__).resolve().parents[2])  # this checkout's src/
    env = dict(os.environ, PYTHONPATH=src)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    assert out == ["1", "0", "True"]


def test_native_sealing_equals_the_reference_path(tmp_path, monkeypatch):
    """With a fixed data key, the writer's one-pass native sealing gives the same members as
    the reference composition: `cryptography`'s AES-GCM, then stored deflate blocks, then
    the XXH3 of the sealed bytes."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from dsbackup._ext.checksum import xxh3_64
    from dsbackup._ext.compress import deflate_body

    fixed = {crypto.ID_BYTES: b"\x11" * 16, crypto.KEY_BYTES: b"\x22" * 32,
             crypto.NONCE_BYTES: b"\x44" * 12}
    monkeypatch.setattr(crypto, "_random", lambda n: fixed[n])
    records = records_for(300)

    def members(name):
        path = lmdb_archive(tmp_path, records, name=name, chunk_size=20,
                            include_metadata=True, material=crypto.KeyMaterial(key=b"k" * 32))
        with ArchiveReader(path, key=crypto.KeyMaterial(key=b"k" * 32)) as r:
            return [(r.read_member(i), r.read_catalog_member(i)) for i in range(r.chunk_count)]

    native = members("native.tar.gz")

    def reference(self, mtype, seq, plaintext, epoch=0):
        sealed = AESGCM(b"\x22" * 32).encrypt(self.nonce(mtype, seq, epoch), bytes(plaintext),
                                              self.aad(mtype, seq, len(plaintext), epoch))
        return deflate_body(sealed, 0), xxh3_64(sealed)

    def reference_into(self, mtype, seq, plaintext, out, epoch=0):
        body, digest = reference(self, mtype, seq, plaintext, epoch)
        out[:len(body.data)] = body.data
        return len(body.data), body.crc32, body.size, body.input_len, digest

    monkeypatch.setattr(crypto.ArchiveCipher, "seal_stored", reference)
    monkeypatch.setattr(crypto.ArchiveCipher, "seal_into", reference_into)
    assert members("reference.tar.gz") == native and len(native) > 5


def test_the_data_key_is_made_while_the_writer_goes_on(tmp_path, monkeypatch):
    """ArchiveWriter returns before the key header is made (its scan starts meanwhile); the
    key's error is raised by the first call that needs it; an aborted writer zeroes the data
    key its thread made."""
    from dsbackup.archive.writer import ArchiveWriter

    made = []
    real = crypto.new_archive_key

    def slow(*a, **k):
        time.sleep(2.0)
        header, cipher = real(*a, **k)
        made.append(cipher)
        return header, cipher

    monkeypatch.setattr(crypto, "new_archive_key", slow)
    material = crypto.KeyMaterial(key=b"k" * 32)
    t0 = time.perf_counter()
    w = ArchiveWriter(tmp_path / "a.tar.gz", manifest={"t": 1}, key=material)
    assert time.perf_counter() - t0 < 1.5  # not waiting for the 2 s key
    w.finish()
    with ArchiveReader(tmp_path / "a.tar.gz", key=material) as r:
        assert r.encrypted and r.chunk_count == 0

    with ArchiveWriter(tmp_path / "b.tar.gz", manifest={"t": 1}, key=material):
        pass  # left without finish: aborted
    assert bytes(made[-1]._dk) == bytes(32) and not (tmp_path / "b.tar.gz").exists()

    bad = {"name": "scrypt", "salt": "00" * 16, "n": 3, "r": 8, "p": 1}
    w = ArchiveWriter(tmp_path / "c.tar.gz", manifest={"t": 1},
                      key=crypto.KeyMaterial(passphrase=PASS), kdf=bad)
    with pytest.raises(IntegrityError, match="kdf parameters out of bounds"):
        w.finish()
    assert list(tmp_path.iterdir()) == [tmp_path / "a.tar.gz"]


def test_hostile_kdf_memory_is_refused_before_scrypt_runs(monkeypatch):
    """A key header may ask scrypt for n = 2^22 and r = 64 (r·p within 64): 32 GiB. Found by
    benchmarks/fuzz_archives.py: the reader ran scrypt on it ("internal error: MemoryError"
    under a memory limit; an allocation of 32 GiB without one). Readers refuse more than any
    writer uses (n <= 2^22 with r = 8: 4 GiB), before scrypt is called."""
    from cryptography.hazmat.primitives.kdf import scrypt

    called = []

    class Spy:
        def __init__(self, **kw):
            called.append(kw)

        def derive(self, secret):
            raise AssertionError("scrypt ran")

    monkeypatch.setattr(scrypt, "Scrypt", Spy)
    material = crypto.KeyMaterial(passphrase=PASS)
    # the last two: within 4 GiB, but 8 and 4 times a writer's largest work (n·r·p = 2^25):
    # about 2 minutes of CPU here for each key tried, before "wrong passphrase or key"
    for n, r, p in ((1 << 22, 64, 1), (1 << 22, 16, 4), (1 << 21, 32, 2), (1 << 22, 1, 64),
                    (1 << 21, 8, 8)):
        kdf = {"name": "scrypt", "salt": "00" * 16, "n": n, "r": r, "p": p}
        with pytest.raises(IntegrityError, match="kdf parameters out of bounds"):
            material.kek(kdf, "a.tar.gz")
    assert called == []


def test_scrypt_out_of_memory_is_one_clear_error(monkeypatch):
    """Parameters within the bounds on a machine without the memory: an error of the
    environment (exit 2) naming the need, not an internal error."""
    from cryptography.hazmat.primitives.kdf import scrypt

    from dsbackup.errors import DsBackupError

    class Short:
        def __init__(self, **kw):
            pass

        def derive(self, secret):
            raise MemoryError("Not enough memory to derive key.")

    monkeypatch.setattr(scrypt, "Scrypt", Short)
    kdf = {"name": "scrypt", "salt": "00" * 16, "n": 1 << 22, "r": 8, "p": 1}
    with pytest.raises(DsBackupError) as ei:
        crypto.KeyMaterial(passphrase=PASS).kek(kdf, "a.tar.gz")
    assert ei.value.exit_code == 2
    assert "a.tar.gz" in str(ei.value) and "4096 MiB" in str(ei.value)


def test_concurrent_blocks_keep_their_own_key(tmp_path):
    """``using_key`` was one process-wide key: two threads backing up with different keys (a
    scheduler's concurrent schedules, an application's threads) read their archives with the
    other's — the check before the rename failed with 'wrong passphrase or key', and one
    thread leaving its block left the other with none. Each thread now has its own; a thread
    that opened no block (a block's helper) sees the blocks open, as before."""
    import threading

    a, b = crypto.KeyMaterial(key=b"a" * 32), crypto.KeyMaterial(key=b"b" * 32)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def first() -> None:
        with crypto.using_key(a):
            a_in.set()
            b_in.wait(10)
            seen["a while b"] = crypto.current_key()
        a_out.set()

    def second() -> None:
        a_in.wait(10)
        with crypto.using_key(b):
            b_in.set()
            a_out.wait(10)
            seen["b after a"] = crypto.current_key()
            helper = threading.Thread(target=lambda: seen.update(helper=crypto.current_key()))
            helper.start()
            helper.join()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen == {"a while b": a, "b after a": b, "helper": b}
    assert crypto.current_key() is None


def test_a_deeply_nested_key_header_is_damage(tmp_path, monkeypatch):
    """The key header is plaintext behind checksums anyone can recompute: 4 KiB of nested
    '[' made every command say 'internal error: RecursionError' (exit 2); it is damage of
    the key header now (exit 3), as any other malformed one."""
    datasets.write_lmdb(str(tmp_path / "s"), datasets.iter_small(100))
    made = crypto.new_archive_key

    def hostile(*args, **kw):
        _, cipher = made(*args, **kw)
        return b"[" * 2000 + b"]" * 2000, cipher

    monkeypatch.setattr(crypto, "new_archive_key", hostile)
    arc = tmp_path / "a.tar.gz"
    k = crypto.KeyMaterial(key=b"k" * 32)
    BackupManager(BackupConfig(encryption=k, verify_integrity=False)).create_backup(
        f"lmdb:{tmp_path / 's'}", arc)
    with pytest.raises(IntegrityError, match="key header is not valid JSON") as exc:
        ArchiveReader(arc, key=k)
    assert exc.value.part == "key"
    report = verify_archive(arc, deep=False)  # without the key
    assert not report.ok and "key header is not valid JSON" in report.errors[0]


def test_a_thread_without_a_block_tries_the_keyring_too(tmp_path, monkeypatch):
    """A scheduler verifies (or prunes) one schedule's archive in a thread of its own while
    another schedule's backup runs inside ``using_key``: the verify's reader took that other
    key as the only candidate and failed with 'wrong passphrase or key', leaving the archive
    unverified. A thread that opened no block now tries the open blocks' keys, then the
    keyring."""
    import threading

    monkeypatch.setattr(crypto, "_keyring", [])
    a, b = crypto.KeyMaterial(key=b"a" * 32), crypto.KeyMaterial(key=b"b" * 32)
    datasets.write_lmdb(str(tmp_path / "s"), datasets.iter_small(50))
    arc = tmp_path / "b.tar.gz"
    BackupManager(BackupConfig(encryption=b)).create_backup(f"lmdb:{tmp_path / 's'}", arc)
    crypto.add_to_keyring(a)
    crypto.add_to_keyring(b)
    inside, done = threading.Event(), threading.Event()

    def backup_of_a() -> None:
        with crypto.using_key(a):
            inside.set()
            done.wait(30)

    t = threading.Thread(target=backup_of_a)
    t.start()
    try:
        assert inside.wait(10)
        with ArchiveReader(arc) as r:  # this thread opened no block: the keyring's b serves
            assert r.encrypted and r.key is b
    finally:
        done.set()
        t.join(30)
