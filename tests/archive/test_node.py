"""The node member (docs/FORMAT.md §11.1, §11.2): encoding, format versions, hostile members."""

from __future__ import annotations

import hashlib
import struct

import pytest

from dsbackup._ext.checksum import xxh3_64
from dsbackup.archive import format as fmt
from dsbackup.archive.member import member_end
from dsbackup.archive.node import (
    KIND_DIR,
    KIND_FILE,
    NodeFile,
    decode_node,
    encode_node,
)
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import verify_archive
from dsbackup.archive.writer import ArchiveWriter
from dsbackup.errors import IntegrityError, UnsupportedArchive

RECORDS = [(b"/k/%04d" % i, b"v" * (i % 37)) for i in range(300)]
FILES = [
    NodeFile(b"config", KIND_FILE, 0o600, 1_700_000_000_000_000_001,
             b'{"Identity": {"PeerID": "12D3", "PrivKey": "CAESQ"}}'),
    NodeFile(b"keystore", KIND_DIR, 0o700, 1_700_000_000_000_000_002),
    NodeFile(b"keystore/key_a", KIND_FILE, 0o400, 5, b"\x00secret\xff"),
    NodeFile(b"version", KIND_FILE, 0o644, -1, b"16\n"),
]


def _write(path, node: bytes | None, records=RECORDS):
    """An archive of `records` with the given node member data (None: a version-1 archive)."""
    from dsbackup._ext.framing import Chunker
    from dsbackup.pipeline.chunks import compress_chunk

    chunker = Chunker(4, 1 << 20)
    chunks = chunker.add([k for k, _ in records], [v for _, v in records])
    last = chunker.finish()
    chunks += [last] if last is not None else []
    manifest = {"format": "dsbackup", "version": 1, "created": "2026-01-01T00:00:00+00:00",
                "settings": {"chunk_size": 4, "chunk_max_bytes": 1 << 20}, "parent": None}
    with ArchiveWriter(path, manifest=manifest, level=1, created=1767225600, node=node) as w:
        for c in chunks:
            w.add_chunk(compress_chunk(c, 1, False))
        return w.finish({})


def _members(path) -> list[fmt.Subfield]:
    data = memoryview(path.read_bytes())
    out, pos = [], 0
    while pos < len(data) - fmt.TRAILER_SIZE:
        sub, pos = member_end(data, pos)
        out.append(sub)
    return out


def test_encoding_round_trips_and_is_canonical():
    data = encode_node(list(reversed(FILES)))  # sorted by the encoder
    assert data[:4] == b"DSN1"
    assert decode_node(data, "x") == FILES
    assert encode_node(decode_node(data, "x")) == data


def test_version_1_archives_are_byte_identical_to_before(tmp_path, make_archive):
    """The writer without a node member writes what it wrote before version 2 existed: the
    digest below was taken from the code before this change (same records and settings)."""
    written = make_archive(tmp_path / "a.tar.gz", RECORDS, catalog=True, level=0)
    assert hashlib.sha256(written.path.read_bytes()).hexdigest() == (
        "e6b3441d6cc3d3f345aaf96946bf5907c545873644b48298d73f4e346aabc823")
    with ArchiveReader(written.path) as r:
        assert (r.version, r.has_node, r.node_files()) == (1, False, [])


def test_a_node_member_makes_every_member_version_2(tmp_path):
    written = _write(tmp_path / "a.tar.gz", encode_node(FILES))
    subs = _members(written.path)
    assert [s.member_type for s in subs[:3]] == [fmt.TYPE_MANIFEST, fmt.TYPE_NODE,
                                                 fmt.TYPE_CHUNK]
    assert {s.version for s in subs} == {2}
    with ArchiveReader(written.path) as r:
        assert r.version == 2 and r.trailer.version == 2
        assert r.manifest["version"] == 2
        assert r.node_files() == FILES
        assert r.index.node_offset == r.index.manifest_length
        assert [bytes(r.read_chunk(i))[:4] for i in range(2)] == [b"DSC1"] * 2
    report = verify_archive(written.path)
    assert report.ok and report.node_files == 4 and report.records == len(RECORDS)
    assert verify_archive(written.path, deep=False).ok
    # chunk_bytes counts chunk members only, as in version 1
    assert written.summary["chunk_bytes"] == written.chunk_bytes


def _retrailer(path, flags: int, version: int = 2) -> None:
    """Rewrite the trailer's version/flags with a valid check (an archive of a newer writer)."""
    buf = bytearray(path.read_bytes())
    t = len(buf) - fmt.TRAILER_SIZE + fmt.SUBFIELD_OFFSET
    struct.pack_into("<BBH", buf, t, version, fmt.TYPE_TRAILER, flags)
    struct.pack_into("<Q", buf, t + 68, xxh3_64(bytes(buf[t : t + 68])))
    path.write_bytes(bytes(buf))


# encryption (flag bit 0) and paging (bit 1) are implemented (test_encryption.py,
# test_pages.py): a trailer claiming them over members that do not is damage (exit 3)
@pytest.mark.parametrize("flags", [2, 3])
def test_a_trailer_flagged_paged_over_unpaged_members_is_damage(tmp_path, flags, run_cli):
    p = _write(tmp_path / "a.tar.gz", encode_node(FILES)).path
    _retrailer(p, flags)
    with pytest.raises(IntegrityError, match="subfield flags|key header"):
        ArchiveReader(p)
    for cmd in (["verify"], ["ls"], ["restore", None]):
        args = [a if a is not None else f"lmdb:{tmp_path / 'out'}" for a in cmd]
        r = run_cli(args[0], p, *args[1:])
        assert r.returncode == 3, (cmd, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_version_and_flag_bits(tmp_path):
    p = _write(tmp_path / "a.tar.gz", encode_node(FILES)).path
    _retrailer(p, 0, version=3)
    with pytest.raises(UnsupportedArchive, match="unsupported format version 3"):
        ArchiveReader(p)
    _retrailer(p, 8)  # bit 2 is the zstd codec (§11.6); bit 3 is unknown: unsupported
    with pytest.raises(UnsupportedArchive, match="unknown subfield flags 0x8"):
        ArchiveReader(p)


def test_mixed_versions_are_damage(tmp_path):
    """A version-1 member inside a version-2 archive (same length, valid check)."""
    p = _write(tmp_path / "a.tar.gz", encode_node(FILES)).path
    with ArchiveReader(p) as r:
        off = r.entry(0).offset
    buf = bytearray(p.read_bytes())
    sub = off + fmt.SUBFIELD_OFFSET
    buf[sub] = 1
    struct.pack_into("<Q", buf, sub + fmt.CHUNK_SUBLEN - 8,
                     xxh3_64(bytes(buf[sub : sub + fmt.CHUNK_SUBLEN - 8])))
    p.write_bytes(bytes(buf))
    report = verify_archive(p)
    assert not report.ok and report.bad_chunks == [0]
    # the member XXH3 in the index catches it first; the version check names it as such
    with ArchiveReader(p) as r:
        raw = r.pread(off, r.entry(0).length)
        with pytest.raises(IntegrityError, match="version-1 member in a version-2 archive"):
            r.decode_chunk_member(0, raw)


def _entry(path: bytes, kind: int = KIND_FILE, mode: int = 0o644, data: bytes = b"x",
           size: int | None = None) -> bytes:
    def uv(n: int) -> bytes:
        out = bytearray()
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        return bytes(out + bytes([n]))
    return (uv(len(path)) + path + struct.pack("<BIq", kind, mode, 0)
            + uv(len(data) if size is None else size) + data)


def _node(*entries: bytes, count: int | None = None) -> bytes:
    return struct.pack("<4sIQ", b"DSN1", 0, len(entries) if count is None else count) \
        + b"".join(entries)


HOSTILE = {
    "dotdot": (_node(_entry(b"../escape")), "'..' segment"),
    "inner dotdot": (_node(_entry(b"keystore/../../x")), "'..' segment"),
    "absolute": (_node(_entry(b"/etc/passwd")), "absolute path"),
    "nul": (_node(_entry(b"con\0fig")), "NUL"),
    "backslash": (_node(_entry(b"a\\b")), "backslash"),
    "empty segment": (_node(_entry(b"a//b")), "empty"),
    "duplicate": (_node(_entry(b"config"), _entry(b"config")), "duplicate path"),
    "unordered": (_node(_entry(b"version"), _entry(b"config")), "unordered path"),
    "size beyond data": (_node(_entry(b"config", data=b"abc", size=1000)), "beyond the data"),
    "kind 2": (_node(_entry(b"config", kind=2)), "unknown kind 2"),
    "dir with data": (_node(_entry(b"d", kind=KIND_DIR)), "directory with"),
    "mode bits": (_node(_entry(b"config", mode=0o100644)), "more than permission bits"),
    "under a file": (_node(_entry(b"config"), _entry(b"config/x")), "regular file"),
    "count too high": (_node(_entry(b"config"), count=5), "declares 5 entries"),
    "trailing bytes": (_node(_entry(b"config")) + b"zz", "after the last entry"),
    "bad magic": (b"DSN2" + _node(_entry(b"config"))[4:], "bad magic"),
}


def _check_hostile(run_cli, tmp_path, name) -> None:
    data, why = HOSTILE[name]
    with pytest.raises(IntegrityError, match=why):
        decode_node(data, "node")
    p = _write(tmp_path / "a.tar.gz", data).path
    target = tmp_path / "restored"
    r = run_cli("restore", p, f"kubo:{target}")
    assert r.returncode == 3, r.stderr
    assert "node member" in r.stderr and why.split()[0] in r.stderr
    assert not target.exists() and not (tmp_path / "escape").exists()
    r = run_cli("restore", p, f"lmdb:{tmp_path / 'l'}")  # any target: the archive is bad
    assert r.returncode == 3 and not (tmp_path / "l").exists()
    r = run_cli("verify", p)
    assert r.returncode == 3 and "node member" in r.stderr
    r = run_cli("verify", "--quick", p)  # quick: the member's checksums hold
    assert r.returncode == 0, r.stderr
    assert run_cli("ls", p).returncode == 3
    assert run_cli("inspect", p).returncode == 3


# every hostile member through the CLI's main() in this process (its exit codes and messages;
# six commands each), and a sample of them through the real CLI process
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_node_members_exit_3_naming_the_member_and_write_nothing(tmp_path, name,
                                                                        run_cli_inprocess):
    _check_hostile(run_cli_inprocess, tmp_path, name)


@pytest.mark.parametrize("name", ["dotdot", "absolute", "size beyond data"])
def test_hostile_node_members_in_the_cli_process(tmp_path, name, run_cli):
    _check_hostile(run_cli, tmp_path, name)


def test_damaged_node_member_fails_quick_verify(tmp_path, run_cli):
    p = _write(tmp_path / "a.tar.gz", encode_node(FILES)).path
    with ArchiveReader(p) as r:
        off, length = r.index.node_offset, r.index.node_length
    buf = bytearray(p.read_bytes())
    buf[off + length - 12] ^= 0x40  # inside the deflate stream
    p.write_bytes(bytes(buf))
    for args in (["verify", "--quick"], ["verify"]):
        r = run_cli(*args, p)
        assert r.returncode == 3 and "node member" in r.stderr, r.stderr
