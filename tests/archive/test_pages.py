"""The paged index (docs/FORMAT.md §11.3): pages written as the backup runs, a root on top,
pages read on demand and checked; hostile pages are damage (exit 3), never a traceback."""

from __future__ import annotations

import re
import struct
import subprocess

import numpy as np
import pytest

from dsbackup._ext.checksum import xxh3_64
from dsbackup._ext.compress import deflate_body, tar_header
from dsbackup._ext.framing import decode_records
from dsbackup.archive import format as fmt
from dsbackup.archive.crypto import KeyMaterial
from dsbackup.archive.index import ENTRY_DTYPE
from dsbackup.archive.listing import iter_listing
from dsbackup.archive.pagedindex import ROOT_DTYPE
from dsbackup.archive.pages import choose_page_entries, expected_chunks
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.verify import verify_archive
from dsbackup.errors import ConfigError, IntegrityError

RECORDS = [(b"/k/%06d" % i, b"v%d" % i * (i % 23)) for i in range(3000)]
PE = 256  # the smallest page: ~750 chunks of chunk_size 4 span 3 pages


def _pair(tmp_path, make_archive, **kw):
    paged = make_archive(tmp_path / "paged.tar.gz", RECORDS, page_entries=PE, **kw)
    flat = make_archive(tmp_path / "flat.tar.gz", RECORDS, **kw)
    return paged, flat


def _all_records(path) -> list[tuple[bytes, bytes]]:
    out = []
    with ArchiveReader(path) as r:
        for i in range(r.chunk_count):
            keys, values = decode_records(r.read_chunk(i))
            out += list(zip(keys, values))
    return out


def _same(e) -> tuple:
    return (e.seq, e.first_key, e.last_key, e.records, e.payload_len, e.payload_xxh3,
            e.keys_xxh3, e.flags)


@pytest.mark.parametrize("catalog", [False, True])
def test_paged_archive_reads_like_the_single_index_one(tmp_path, make_archive, catalog):
    paged, flat = _pair(tmp_path, make_archive, catalog=catalog)
    assert paged.chunks == flat.chunks > 2 * PE
    # chunk payloads are the same, so is the fingerprint; chunk_bytes excludes the pages
    assert paged.fingerprint == flat.fingerprint
    assert paged.chunk_bytes == flat.chunk_bytes
    assert _all_records(paged.path) == RECORDS
    with ArchiveReader(paged.path) as r, ArchiveReader(flat.path) as f:
        assert r.paged and not f.paged and r.version == 2 and f.version == 1
        assert r.index.page_count == -(-paged.chunks // PE)
        assert [_same(e) for e in r.index.entries()] == [_same(e) for e in f.index.entries()]
        assert r.index.catalog_count == f.index.catalog_count
        bounds = [b"", b"/a", b"/k/000000", b"/k/000001", b"/k/0012", b"/k/001234",
                  b"/k/0029", b"/k/002999", b"/k/003", b"/z"]
        for s in bounds:
            for e in bounds + [None]:
                assert r.index.chunks_overlapping(s, e) == f.index.chunks_overlapping(s, e)
        assert list(iter_listing(r, b"/k/0010", b"/k/0011")) == \
            list(iter_listing(f, b"/k/0010", b"/k/0011"))
    for deep in (True, False):
        report = verify_archive(paged.path, deep=deep)
        assert report.ok, report.errors
    assert verify_archive(paged.path).records == len(RECORDS)
    # still a .tar.gz: gzip -t, tar -t lists the pages before the root
    assert subprocess.run(["gzip", "-t", str(paged.path)]).returncode == 0
    names = subprocess.run(["tar", "-tzf", str(paged.path)], capture_output=True, text=True,
                           check=True).stdout.split()
    pages = [n for n in names if n.startswith("dsbackup/pages/")]
    assert pages == [f"dsbackup/pages/{p:08d}" for p in range(len(pages))]
    assert names[-3:] == [pages[-1], "dsbackup/index", "dsbackup/summary.json"]
    # each page follows the last chunk (and catalog) it describes
    first_page = names.index(pages[0])
    assert names[first_page - 1] == (f"dsbackup/catalog/{PE - 1:08d}" if catalog
                                     else f"dsbackup/chunks/{PE - 1:08d}")


def test_open_reads_the_root_only_and_a_prefix_touches_few_pages(tmp_path, make_archive):
    paged, _ = _pair(tmp_path, make_archive)
    with ArchiveReader(paged.path) as r:
        loaded: list[int] = []
        inner = r.index._read_page

        def counting(p, *args):
            loaded.append(p)
            return inner(p, *args)

        r.index._read_page = counting
        assert r.chunk_count == paged.chunks and r.manifest["format"] == "dsbackup"
        assert loaded == []  # open, manifest, summary: no page
        rows = list(iter_listing(r, b"/k/0020", b"/k/0021"))
        assert [k for k, _, _ in rows] == [b"/k/%06d" % i for i in range(2000, 2100)]
        assert 1 <= len(set(loaded)) <= 2
        r.index._cache.clear()
        loaded.clear()
        r.entry(r.chunk_count - 1)
        assert loaded == [r.index.page_count - 1]


def test_encrypted_paged_archive(tmp_path, make_archive):
    from dsbackup.archive.crypto import using_key

    key = KeyMaterial(key=bytes(range(32)))  # a key file's key: no scrypt
    w = make_archive(tmp_path / "enc.tar.gz", RECORDS, page_entries=PE, key=key,
                     catalog=True)
    with ArchiveReader(w.path, key=key) as r:
        assert r.paged and r.encrypted and r.index.page_count == -(-w.chunks // PE)
        # pages are sealed (§11.4, nonce seq = page number): no plaintext key in the file
    assert b"/k/000300" not in w.path.read_bytes()
    with using_key(key):
        report = verify_archive(w.path)
        assert report.ok, report.errors
        assert _all_records(w.path) == RECORDS
    locked = verify_archive(w.path, deep=False)  # no key: the sealed members, pages included
    assert locked.mode == "quick-sealed" and locked.ok, locked.errors
    assert locked.checked_chunks == w.chunks


def test_choose_page_entries(monkeypatch):
    assert choose_page_entries("auto", None) is None
    assert choose_page_entries("auto", 4096) is None
    assert choose_page_entries("auto", 4097) == 4096
    assert choose_page_entries("always", 1) == 4096
    assert choose_page_entries("never", 1e9) is None
    assert expected_chunks(10_000_000, 10 << 30, 1000, 2 << 20) == 10_000
    assert expected_chunks(None, None, 1000, 2 << 20) is None
    monkeypatch.setenv("DSBACKUP_TEST_PAGE_ENTRIES", "256")
    assert choose_page_entries("auto", 300) == 256
    monkeypatch.setenv("DSBACKUP_TEST_PAGE_ENTRIES", "300")
    with pytest.raises(ConfigError):
        choose_page_entries("auto", 300)
    with pytest.raises(ConfigError):
        choose_page_entries("sometimes", 1)


# -- hostile pages and roots ---------------------------------------------------------------------


def _member(mtype: int, name: bytes, data: bytes) -> bytes:
    """A stored member of a paged version-2 archive (what the writer writes for pages)."""
    body = deflate_body(data, 0)
    from dsbackup._ext.checksum import crc32, crc32_combine

    hdr = tar_header(name, len(data), 0)
    sub = fmt.data_subfield(mtype, len(data), xxh3_64(data), 2, fmt.FLAG_PAGED)
    return (fmt.member_head(sub) + fmt.STORED_TAR_PREFIX + hdr + body.data
            + fmt.member_tail(crc32_combine(crc32(hdr), body.crc32, body.size),
                              512 + body.size))


def _rewrite(path, page: int | None = None, mutate_page=None, mutate_root=None,
             fix_root_digest: bool = True) -> None:
    """Change page `page`'s data and/or the root's data in place (same lengths), with every
    member digest, the root's page digest and the trailer made consistent again."""
    with ArchiveReader(path) as r:
        t = r.trailer
        ix = r.index
        root = bytearray(r.pread(t.index_offset, t.index_length))
        from dsbackup.archive.member import decode_member

        _, rdata = decode_member(bytes(root), "root", expected_type=fmt.TYPE_INDEX,
                                 expected_name=fmt.INDEX_NAME)
        rdata = bytearray(rdata)
        buf = bytearray(path.read_bytes())
        if page is not None:
            off, length = int(ix._root["offset"][page]), int(ix._root["length"][page])
            pdata = bytearray(r._read_page(page, off, length, int(ix._root["member_xxh3"][page])))
            mutate_page(pdata)
            m = _member(fmt.TYPE_PAGE, fmt.page_name(page), bytes(pdata))
            assert len(m) == length
            buf[off : off + length] = m
            if fix_root_digest:
                struct.pack_into("<Q", rdata, 96 + page * 64 + 16, xxh3_64(m))
        if mutate_root is not None:
            mutate_root(rdata)
        im = _member(fmt.TYPE_INDEX, fmt.INDEX_NAME, bytes(rdata))
        assert len(im) == t.index_length
        buf[t.index_offset : t.index_offset + t.index_length] = im
        tr = fmt.Trailer(t.index_offset, t.index_length, xxh3_64(im), t.summary_offset,
                         t.summary_length, t.summary_xxh3, t.chunk_count, t.trailer_offset,
                         t.version, t.flags)
        buf[t.trailer_offset :] = tr.encode()
    path.write_bytes(bytes(buf))


def _entries(pdata: bytearray) -> np.ndarray:
    (count,) = struct.unpack_from("<Q", pdata, 24)
    return np.frombuffer(pdata, ENTRY_DTYPE, count, 64)


def _set_entry(pdata: bytearray, j: int, field: str, value: int) -> None:
    off = 64 + j * 88 + ENTRY_DTYPE.fields[field][1]
    fmt_ = "<Q" if ENTRY_DTYPE.fields[field][0].itemsize == 8 else "<I"
    struct.pack_into(fmt_, pdata, off, value)


def _first_key_at(pdata: bytearray, j: int) -> int:
    e = _entries(pdata)
    (count, keys_len, ccount) = (struct.unpack_from("<Q", pdata, 24)[0],
                                 struct.unpack_from("<Q", pdata, 32)[0],
                                 struct.unpack_from("<Q", pdata, 40)[0])
    kbase = 64 + count * 88 + ccount * 40
    assert kbase + keys_len == len(pdata)
    return kbase + int(e["keys_off"][j])


HOSTILE_PAGES = {
    "wrong entry count": (1, lambda d: struct.pack_into("<Q", d, 24, 255),
                          "entries; the root says"),
    "wrong page number": (1, lambda d: struct.pack_into("<Q", d, 8, 2), "says page 2"),
    "bad seq": (1, lambda d: _set_entry(d, 7, "seq", 5), "entry 7 has seq 5"),
    "keys out of order": (1, lambda d: d.__setitem__(_first_key_at(d, 9) + 3, 0x20),
                          "does not follow the previous chunk"),
    "first key not the root's": (1, lambda d: d.__setitem__(_first_key_at(d, 0) + 3, 0x20),
                                 "disagrees with the root"),
    "member outside the tiling": (1, lambda d: _set_entry(d, 4, "offset",
                                                           int(_entries(d)["offset"][4]) + 1),
                                  "does not follow the previous member"),
    "member beyond the page": (2, lambda d: _set_entry(d, 3, "length", 1 << 40),
                               "outside the page's part"),
    "records disagree with the root": (0, lambda d: _set_entry(d, 2, "records", 99),
                                       "records, the root says"),
    "keys outside the blob": (0, lambda d: _set_entry(d, 1, "keys_off", 1 << 62),
                              "keys lie outside"),
    "unknown entry flags": (2, lambda d: _set_entry(d, 0, "flags", 4), "unknown flags"),
    "bad magic": (0, lambda d: d.__setitem__(slice(0, 4), b"DSPX"), "bad magic"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_PAGES))
def test_hostile_page_is_damage(tmp_path, make_archive, case):
    page, mutate, message = HOSTILE_PAGES[case]
    w = make_archive(tmp_path / "a.tar.gz", RECORDS, page_entries=PE)
    _rewrite(w.path, page, mutate)
    # open reads the root only: still fine; the page fails when it is read
    with ArchiveReader(w.path) as r, pytest.raises(IntegrityError, match=message):
        for i in range(r.chunk_count):
            r.entry(i)
    report = verify_archive(w.path)
    assert not report.ok and any(message in e for e in report.errors), report.errors
    assert "index" in report.bad_parts or report.bad_chunks


def test_page_member_digest_mismatch(tmp_path, make_archive):
    w = make_archive(tmp_path / "a.tar.gz", RECORDS, page_entries=PE)
    _rewrite(w.path, 1, lambda d: _set_entry(d, 0, "reserved", 0), fix_root_digest=False)
    with ArchiveReader(w.path) as r:
        off = int(r.index._root["offset"][1])
    buf = bytearray(w.path.read_bytes())
    buf[off + 700] ^= 1
    w.path.write_bytes(bytes(buf))
    report = verify_archive(w.path)
    assert not report.ok
    assert any("index page 1: member checksum mismatch" in e for e in report.errors)


def _root_entry(rdata: bytearray, p: int, field: str, value: int) -> None:
    off = 96 + p * 64 + ROOT_DTYPE.fields[field][1]
    fmt_ = "<Q" if ROOT_DTYPE.fields[field][0].itemsize == 8 else "<I"
    struct.pack_into(fmt_, rdata, off, value)


HOSTILE_ROOTS = {
    "page count": (lambda d: struct.pack_into("<Q", d, 16, 2), "pages for"),
    "page size": (lambda d: struct.pack_into("<Q", d, 24, 300), "not a power of two"),
    "entry count": (lambda d: _root_entry(d, 1, "count", 255), "the tiling needs"),
    "first seq": (lambda d: _root_entry(d, 2, "first_seq", 3), "the tiling needs"),
    "page offset outside": (lambda d: _root_entry(d, 1, "offset", 1 << 50),
                            "outside the chunk area"),
    "pages out of order": (lambda d: _root_entry(d, 1, "offset", 100), "does not follow"),
    "page key ranges": (lambda d: _root_entry(d, 1, "first_len", 1), "is not after"),
    "reserved": (lambda d: struct.pack_into("<Q", d, 88, 1), "reserved"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ROOTS))
def test_hostile_root_fails_at_open(tmp_path, make_archive, case, run_cli):
    mutate, message = HOSTILE_ROOTS[case]
    w = make_archive(tmp_path / "a.tar.gz", RECORDS, page_entries=PE)
    _rewrite(w.path, mutate_root=mutate)
    with pytest.raises(IntegrityError, match=message):
        ArchiveReader(w.path)
    report = verify_archive(w.path)
    assert not report.ok and message in report.errors[0]


@pytest.mark.parametrize("cmd", ["verify", "ls", "restore", "inspect"])
def test_cli_exit_3_on_a_hostile_page(tmp_path, make_archive, run_cli, cmd):
    w = make_archive(tmp_path / "a.tar.gz", RECORDS, page_entries=PE)
    _rewrite(w.path, 0, lambda d: _set_entry(d, 7, "seq", 5))
    args = {"restore": [f"lmdb:{tmp_path / 'out'}"]}.get(cmd, [])
    r = run_cli(cmd, w.path, *args)
    if cmd == "inspect":  # reads the root, manifest and summary: no page
        assert r.returncode == 0, r.stderr
        assert re.search(r"index +paged: \d+ pages of up to 256 chunks", r.stdout), r.stdout
        return
    assert r.returncode == 3, (r.returncode, r.stderr)
    assert "index page 0" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("block", [2, 3, 4096])
def test_vectorized_key_order_agrees_with_bytes_order(monkeypatch, block):
    """The padded numpy comparison (keys with zero bytes, prefixes, equal keys; rows compared
    in blocks) finds the same first out-of-order entry as Python's bytes comparison."""
    import random

    from dsbackup.archive import pagedindex as pages
    from dsbackup.archive.pagedindex import _first_unordered

    monkeypatch.setattr(pages, "_BLOCK_ROWS", block)
    rng = random.Random(5)
    for _ in range(1500):
        n = rng.randrange(1, 8)
        keys = [bytes(rng.choice(b"a\x00b") for _ in range(rng.randrange(1, 4)))
                for _ in range(2 * n)]
        offs, fl, ll, pos = [], [], [], 0
        for j in range(n):
            offs.append(pos)
            fl.append(len(keys[2 * j]))
            ll.append(len(keys[2 * j + 1]))
            pos += fl[-1] + ll[-1]
        got = _first_unordered(b"".join(keys), np.array(offs, np.uint64),
                               np.array(fl, np.uint32), np.array(ll, np.uint32))
        expect, prev = None, None
        for j in range(n):
            first, last = keys[2 * j], keys[2 * j + 1]
            if first > last or (prev is not None and first <= prev):
                expect = j
                break
            prev = last
        assert got == expect, keys


def test_drop_page_forgets_the_chunks_since_the_last_page():
    from dsbackup.archive.index import CatalogEntry, ChunkEntry
    from dsbackup.archive.pages import PagedIndexBuilder

    def entry(i):
        return ChunkEntry(i, 100 + i, 10, 5, 1, i, i, i, b"k%05d" % i, b"k%05d~" % i)

    a, b = PagedIndexBuilder(256), PagedIndexBuilder(256)
    for i in range(256):
        for x in (a, b):
            x.add_chunk(entry(i))
            x.add_catalog(CatalogEntry(i, 1, 2, 3, 4))
    for x in (a, b):
        x.page_written(*(7, 8, 9))
    for i in range(256, 300):  # added to `a` only, then dropped
        a.add_chunk(entry(i))
        a.add_catalog(CatalogEntry(i, 1, 2, 3, 4))
    a.drop_page()
    assert (a.count, a.catalog_count, a.pages) == (b.count, b.catalog_count, b.pages) == (
        256, 256, 1)
    for x in (a, b):
        x.add_chunk(entry(256))
        x.add_catalog(CatalogEntry(0, 1, 2, 3, 4))
    assert a.take_page() == b.take_page()
    a.page_written(1, 2, 3)
    b.page_written(1, 2, 3)
    assert a.encode(5, 6) == b.encode(5, 6)


def test_fixed_width_key_order_check_agrees_with_the_padded_one():
    """_first_unordered's in-place path (every key the same length, laid out first, last, ...)
    finds the same first unordered entry as the padded comparison, NUL bytes included."""
    import random

    import numpy as np

    from dsbackup.archive import pagedindex

    rng = random.Random(11)
    for trial in range(300):
        w, n = rng.choice([1, 2, 5]), rng.randrange(1, 12)
        ks = sorted({bytes(rng.choice(b"\x00\x01ab") for _ in range(w)) for _ in range(2 * n)})
        if trial % 3:  # disorder: swap two keys, or repeat one
            i, j = rng.randrange(len(ks)), rng.randrange(len(ks))
            ks[i], ks[j] = ks[j], ks[i] if trial % 2 else ks[i]
        pairs = [(ks[min(2 * i, len(ks) - 1)], ks[min(2 * i + 1, len(ks) - 1)])
                 for i in range((len(ks) + 1) // 2)]
        blob = b"".join(f + last for f, last in pairs)
        m = len(pairs)
        offs = np.arange(m, dtype=np.uint64) * (2 * w)
        lens = np.full(m, w, np.uint32)
        fixed = pagedindex._first_unordered(blob, offs, lens, lens)
        expect = None
        prev = None
        for j, (f, last) in enumerate(pairs):
            if f > last or (prev is not None and f <= prev):
                expect = j
                break
            prev = last
        assert fixed == expect, (pairs, fixed, expect)


def test_sequential_readers_hold_two_decoded_pages(tmp_path, make_archive, monkeypatch):
    """Deep verify (2 threads) and ls go through the chunks in order: at most 2 decoded pages
    at a time (the one being loaded counted), whatever the page count, so their memory does
    not grow with the archive (before: 4 cached and one loading)."""
    from dsbackup.archive import pagedindex

    paged = make_archive(tmp_path / "paged.tar.gz", RECORDS, page_entries=PE)
    held: list[int] = []
    loads: list[int] = []
    real = pagedindex.PagedIndex._load

    def load(self, p):
        loads.append(p)
        held.append(len(self._cache) + len(self._loading))
        return real(self, p)

    monkeypatch.setattr(pagedindex.PagedIndex, "_load", load)
    assert verify_archive(paged.path, threads=2).ok
    with ArchiveReader(paged.path) as r:
        pages = r.index.page_count
        assert pages >= 3
        assert max(held) <= 2 and sorted(set(loads)) == list(range(pages))
        held.clear()
        assert len(list(iter_listing(r))) == len(RECORDS)
    assert max(held) <= 2
