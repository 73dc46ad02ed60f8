"""Index scale: open, `ls --prefix`, one-prefix restore and peak RSS on a synthetic archive of
60 M chunks (a 15 TB store in 256 KiB chunks) against one of 60 k chunks; the ratios should be
near 1 (docs/FORMAT.md §11.3: O(log n + k) of the index is read).

The archives are generated, not backed up: a real paged index (pages and root, every §11.3
check passes) over a sparse file whose chunk members are holes (no disk), except one real chunk
in the middle holding the children of the prefix measured. Only that chunk is read by the
operations timed; `verify` of such an archive fails on the holes, by design.

    python benchmarks/scale.py                       # 60 M vs 60 k chunks (~6.5 GB of index)
    python benchmarks/scale.py --chunks 600000 --base 6000 --rounds 3

Each operation runs in a fresh process (its own peak RSS); rounds alternate small, large.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

from dsbackup._ext.checksum import Xxh3_128, crc32, crc32_combine, xxh3_64  # noqa: E402
from dsbackup._ext.compress import deflate_body, tar_header  # noqa: E402
from dsbackup.archive import format as fmt  # noqa: E402
from dsbackup.archive.index import ENTRY_DTYPE  # noqa: E402
from dsbackup.archive.pages import _PAGE_HEADER, _ROOT_ENTRY, _ROOT_HEADER  # noqa: E402

CHUNK_MEMBER = 262_144 + 600  # a synthetic chunk member: 256 KiB + headers (a hole)
PREFIX_RECORDS = 200
VERSION, FLAGS = 2, fmt.FLAG_PAGED


def _key(i: int) -> bytes:
    return b"/k/%010d" % i


def prefix_of(n: int) -> str:
    """The prefix whose children the real chunk (seq n // 2) holds."""
    return _key(n // 2).decode()


def _member(mtype: int, name: bytes, data: bytes, level: int = 0, mtime: int = 0,
            seq: int | None = None, records: int = 0, payload_xxh3: int = 0) -> bytes:
    body = deflate_body(data, level)
    if mtype == fmt.TYPE_CHUNK:
        sub = fmt.chunk_subfield(seq, records, len(data), payload_xxh3, VERSION, FLAGS)
    else:
        sub = fmt.data_subfield(mtype, len(data), xxh3_64(data), VERSION, FLAGS)
    hdr = tar_header(name, len(data), mtime)
    crc = crc32_combine(crc32(hdr), body.crc32, body.size)
    return (fmt.member_head(sub) + fmt.STORED_TAR_PREFIX + hdr + body.data
            + fmt.member_tail(crc, fmt.TAR_BLOCK + body.size))


def _real_chunk(seq: int, parent: bytes) -> tuple[bytes, dict]:
    """One real chunk: children of `parent`, records of 1 KiB."""
    from dsbackup._ext.framing import Chunker
    from dsbackup.pipeline.chunks import compress_chunk

    keys = [parent + b"/%06d" % j for j in range(PREFIX_RECORDS)]
    values = [bytes([j % 251]) * 1024 for j in range(PREFIX_RECORDS)]
    ch = Chunker(10**9, 1 << 30)
    chunks = ch.add(keys, values) + [ch.finish()]
    chunks = [c for c in chunks if c is not None]
    assert len(chunks) == 1
    c = compress_chunk(chunks[0], 1, False)
    body = c.body
    sub = fmt.chunk_subfield(seq, c.record_count, body.input_len, c.payload_xxh3, VERSION,
                             FLAGS)
    hdr = tar_header(fmt.chunk_name(seq), body.input_len, 0)
    crc = crc32_combine(crc32(hdr), body.crc32, body.size)
    raw = (fmt.member_head(sub) + fmt.STORED_TAR_PREFIX + hdr + body.data
           + fmt.member_tail(crc, fmt.TAR_BLOCK + body.size))
    return raw, {"records": c.record_count, "payload_len": body.input_len,
                 "payload_xxh3": c.payload_xxh3, "keys_xxh3": c.keys_xxh3,
                 "first": bytes(c.first_key), "last": bytes(c.last_key),
                 "raw_bytes": c.raw_bytes}


def _digits(seqs: np.ndarray) -> np.ndarray:
    """(n, 13) uint8: _key(seq) for each seq, without a Python object per key."""
    out = np.empty((len(seqs), 13), np.uint8)
    out[:, :3] = np.frombuffer(b"/k/", np.uint8)
    p = 10 ** np.arange(9, -1, -1, dtype=np.uint64)
    out[:, 3:] = (seqs[:, None] // p[None, :]) % 10 + 48
    return out


def generate(path: Path, n: int, page_entries: int = 4096) -> dict:
    """Write the synthetic archive of `n` chunks at `path` (sparse). Returns its facts."""
    # the measured prefix's chunk in the middle; and chunk 0, so that a reader streaming the
    # file from its start (is_go_archive's look at the first tar entries) meets no hole: gzip
    # readers skip zero bytes after a member as padding
    reals = {0: _real_chunk(0, b"/a"), n // 2: _real_chunk(n // 2, _key(n // 2))}
    manifest = json.dumps({"format": "dsbackup", "version": VERSION, "created":
                           "2026-01-01T00:00:00+00:00", "tool": "benchmarks/scale.py",
                           "source": {"uri": "synthetic", "backend": "synthetic"},
                           "settings": {"chunk_size": 1, "chunk_max_bytes": 1 << 21,
                                        "compression_level": 1},
                           "parent": None}, sort_keys=True).encode()
    mm = _member(fmt.TYPE_MANIFEST, fmt.MANIFEST_NAME, manifest, 1, 1767225600)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    fp = Xxh3_128()
    try:
        os.pwrite(fd, mm, 0)
        pos = len(mm)
        root = bytearray()
        root_keys = bytearray()
        records = 0
        raw_bytes = 0
        payload_bytes = 0
        for p in range(-(-n // page_entries)):
            first = p * page_entries
            count = min(page_entries, n - first)
            seqs = np.arange(first, first + count, dtype=np.uint64)
            e = np.zeros(count, ENTRY_DTYPE)
            e["seq"] = seqs
            e["length"] = CHUNK_MEMBER
            e["payload_len"] = 262_144
            e["records"] = 1
            e["payload_xxh3"] = seqs * np.uint64(0x9E3779B97F4A7C15)  # any digest: a hole
            e["member_xxh3"] = seqs
            e["keys_xxh3"] = seqs
            e["first_len"] = 13
            e["last_len"] = 13
            e["keys_off"] = np.arange(count, dtype=np.uint64) * 26
            d = _digits(seqs)
            blob = np.concatenate((d, d), axis=1).tobytes()
            lengths = e["length"]
            here = sorted(r - first for r in reals if first <= r < first + count)
            if here:  # the real chunks: their keys, lengths and digests
                parts, prev = [], 0
                for j in here:
                    raw, real = reals[first + j]
                    e["length"][j] = len(raw)
                    e["records"][j] = real["records"]
                    e["payload_len"][j] = real["payload_len"]
                    e["payload_xxh3"][j] = real["payload_xxh3"]
                    e["member_xxh3"][j] = xxh3_64(raw)
                    e["keys_xxh3"][j] = real["keys_xxh3"]
                    e["first_len"][j] = len(real["first"])
                    e["last_len"][j] = len(real["last"])
                    parts += [blob[26 * prev : 26 * j], real["first"], real["last"]]
                    prev = j + 1
                parts.append(blob[26 * prev :])
                blob = b"".join(parts)
                e["keys_off"] = np.concatenate(
                    ([0], np.cumsum(e["first_len"].astype(np.uint64) + e["last_len"])[:-1]))
            lengths = e["length"].astype(np.uint64)
            e["offset"] = np.uint64(pos) + np.concatenate(
                ([0], np.cumsum(lengths)[:-1])).astype(np.uint64)
            for j in here:
                os.pwrite(fd, reals[first + j][0], int(e["offset"][j]))
            pos += int(lengths.sum())
            recs = int(e["records"].sum())
            data = (_PAGE_HEADER.pack(b"DSP1", 0, p, first, count, len(blob), 0, 0, 0)
                    + e.tobytes() + blob)
            pm = _member(fmt.TYPE_PAGE, fmt.page_name(p), data)
            os.pwrite(fd, pm, pos)
            fk = blob[int(e["keys_off"][0]) : int(e["keys_off"][0]) + int(e["first_len"][0])]
            lo = int(e["keys_off"][-1]) + int(e["first_len"][-1])
            lk = blob[lo : lo + int(e["last_len"][-1])]
            root += _ROOT_ENTRY.pack(pos, len(pm), xxh3_64(pm), first, count, len(root_keys),
                                     len(fk), len(lk), recs)
            root_keys += fk + lk
            pos += len(pm)
            fp.update(e["payload_xxh3"].tobytes())
            records += recs
            payload_bytes += int(e["payload_len"].sum())
            raw_bytes += int(e["payload_len"].sum())
        rdata = (_ROOT_HEADER.pack(b"DSR1", 0, n, -(-n // page_entries), page_entries, len(mm),
                                   xxh3_64(mm), 0, 0, len(root_keys), 0, 0, 0)
                 + bytes(root) + bytes(root_keys))
        im = _member(fmt.TYPE_INDEX, fmt.INDEX_NAME, bytes(rdata), 0, 1767225600)
        ioff = pos
        os.pwrite(fd, im, pos)
        pos += len(im)
        summary = json.dumps({"chunks": n, "records": records, "raw_bytes": raw_bytes,
                              "payload_bytes": payload_bytes, "chunk_bytes": 0,
                              "fingerprint": fp.hexdigest()}, sort_keys=True).encode()
        sm = _member(fmt.TYPE_SUMMARY, fmt.SUMMARY_NAME, summary, 1, 1767225600)
        soff = pos
        os.pwrite(fd, sm, pos)
        pos += len(sm)
        t = fmt.Trailer(ioff, len(im), xxh3_64(im), soff, len(sm), xxh3_64(sm), n, pos,
                        VERSION, FLAGS)
        os.pwrite(fd, t.encode(), pos)
        pos += fmt.TRAILER_SIZE
        os.ftruncate(fd, pos)
        os.fsync(fd)
    finally:
        os.close(fd)
    st = os.stat(path)
    return {"chunks": n, "size": st.st_size, "disk": st.st_blocks * 512,
            "root_bytes": len(rdata), "prefix": prefix_of(n),
            "prefix_records": reals[n // 2][1]["records"]}


# -- the measured operations (each in a fresh process) -------------------------------------------


def _op(op: str, path: str, prefix: str, work: str) -> dict:
    from dsbackup.archive.listing import iter_listing
    from dsbackup.archive.reader import ArchiveReader
    from dsbackup.datastores import open_datastore
    from dsbackup.engine.restore import restore_archive
    from dsbackup.keys import children_range

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # after the imports
    t0 = time.perf_counter()
    if op == "open":  # what inspect reads: trailer, root, manifest, summary
        with ArchiveReader(path) as r:
            out = r.chunk_count
            r.manifest, r.summary  # noqa: B018
    elif op == "ls":
        with ArchiveReader(path) as r:
            out = sum(1 for _ in iter_listing(r, *children_range(prefix)))
    elif op == "restore":
        dst = open_datastore(f"lmdb:{work}")
        try:
            out = restore_archive(path, dst, prefix=prefix).records_written
        finally:
            dst.close()
    else:
        raise SystemExit(f"unknown op {op}")
    dt = time.perf_counter() - t0
    return {"op": op, "s": dt, "result": out, "rss0": rss0,
            "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_op(op: str, path: Path, prefix: str, work: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, __file__, "--op", op, str(path), prefix, str(work)],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{op} on {path} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=60_000_000)
    ap.add_argument("--base", type=int, default=60_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write the archives (default: tmp)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the archives in --dir and reuse them in later runs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--op", nargs=4, metavar=("OP", "ARCHIVE", "PREFIX", "WORK"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.op:
        print(json.dumps(_op(*a.op)))
        return 0
    if a.keep and not a.dir:
        raise SystemExit("--keep needs --dir")
    with tempfile.TemporaryDirectory(prefix="dsbackup-scale-", dir=a.dir) as tmp:
        d = a.dir if a.keep else tmp
        facts = {}
        paths = {}
        for label, n in (("small", a.base), ("large", a.chunks)):
            paths[label] = Path(d) / f"synthetic-{n}.tar.gz"
            sidecar = paths[label].with_suffix(".json")
            if a.keep and paths[label].exists() and sidecar.exists():
                facts[label] = json.loads(sidecar.read_text())
                continue
            t0 = time.perf_counter()
            facts[label] = generate(paths[label], n)
            facts[label]["generate_s"] = round(time.perf_counter() - t0, 1)
            if a.keep:
                sidecar.write_text(json.dumps(facts[label]))
            print(f"{label}: {n} chunks, {facts[label]['size'] / 1e12:.3f} TB apparent, "
                  f"{facts[label]['disk'] / 2**30:.2f} GiB on disk, root "
                  f"{facts[label]['root_bytes'] / 2**10:.0f} KiB "
                  f"({facts[label]['generate_s']} s)", file=sys.stderr, flush=True)
        results: dict[str, dict[str, list]] = {}
        for rnd in range(a.rounds):
            for op in ("open", "ls", "restore"):
                for label in ("small", "large"):
                    work = Path(tmp) / f"restore-{label}-{op}-{rnd}"
                    r = run_op(op, paths[label], facts[label]["prefix"], work)
                    if op != "open":
                        assert r["result"] == facts[label]["prefix_records"], r
                    results.setdefault(op, {}).setdefault(label, []).append(r)
                    if work.exists():
                        import shutil

                        shutil.rmtree(work)
        rows = []
        for op, by in results.items():
            s = {lb: statistics.median(x["s"] for x in by[lb]) for lb in by}
            rss = {lb: max(x["rss"] for x in by[lb]) for lb in by}
            grown = {lb: max(x["rss"] - x["rss0"] for x in by[lb]) for lb in by}
            rows.append({"op": op, "small_s": s["small"], "large_s": s["large"],
                         "time_ratio": s["large"] / s["small"],
                         "small_rss": rss["small"], "large_rss": rss["large"],
                         "rss_ratio": rss["large"] / rss["small"],
                         "small_grown": grown["small"], "large_grown": grown["large"]})
    if a.json:
        print(json.dumps({"facts": facts, "rows": rows}, indent=1))
    else:
        print(f"{'op':8} {'small s':>9} {'large s':>9} {'ratio':>6} {'small RSS':>10} "
              f"{'large RSS':>10} {'ratio':>6} {'grown small/large (MiB)':>24}")
        for r in rows:
            print(f"{r['op']:8} {r['small_s']:9.4f} {r['large_s']:9.4f} "
                  f"{r['time_ratio']:6.2f} {r['small_rss'] / 2**20:9.1f}M "
                  f"{r['large_rss'] / 2**20:9.1f}M {r['rss_ratio']:6.2f} "
                  f"{r['small_grown'] / 2**20:11.1f} / {r['large_grown'] / 2**20:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
