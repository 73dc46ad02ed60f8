"""Time dsbackup against the tools a user would otherwise use, on the same data, in one run.

Usage: python benchmarks/compare.py [--datasets blocks,small] [--runs 3] [--workers N]
       [--ops backup,restore,verify] [--tools "dsbackup,dsbackup --encrypt"] [--json FILE]
       [--timeout SECONDS] [--baseline SRC_DIR]
Scale the data sets with DSBACKUP_BENCH_SCALE (e.g. 0.01 for a smoke run); they are cached
(benchdata.py). Results: a table on stdout and JSON in benchmarks/results/.

Every row is a subprocess measured for wall time and peak RSS (GNU ``/usr/bin/time -f %M``
when present, else ``os.wait4``: the largest resident set of the child and the descendants it
waited for, e.g. of tar or pigz in a pipeline). Rows run round-robin, the order reversed every round, so each baseline is
measured next to our own run under the same machine load; the median of ``--runs`` rounds
is reported. "x ours" is the baseline's median time over ours for the same operation on
the same store (above 1: we are faster). All data are in the page cache (warm runs: before
every row its input, the store or the archive, is read once, untimed); before every row
``sync`` flushes what earlier rows left dirty, so no row pays for another's writes.

Every row that writes data ends when that data is durable, timed inside the row, for every
tool alike: our backup fsyncs its archive and directory and our restore fsyncs what it wrote
(the LMDB data file; a flatfs target file by file), so the other rows fsync every file and
directory they wrote before they end (``find OUT -exec sync -- {} +``: coreutils ``sync``
with file arguments fsyncs each one, not the whole file system, which other processes'
dirty pages would also load). The Python children fsync their output the same way.

Rows (skipped, with the reason, when the tool is missing):
- ``dsbackup``: ``python -m dsbackup backup|restore|verify`` (all CPUs).
- ``dsbackup [baseline]``, ``dsbackup (deep) [baseline]`` (with ``--baseline SRC_DIR``): the
  same backup, restore (of the same archive) and deep verify run by another build of dsbackup,
  the package at SRC_DIR (e.g. a copy of ``src`` holding the extension modules from before a
  change): "x ours" is then that build's time over this one's. On the blocks also
  ``dsbackup (flatfs copy) [baseline]``: that build's restore of the flatfs copy's archive.
- ``dsbackup (flatfs copy)`` (blocks): the same of the flatfs copy the file-level tools read,
  restored into a new flatfs directory: files to files, as the tar rows do.
- ``isal-1 x1``, ``isal-1 xN threads``, ``isal-1 in N processes``: ISA-L alone on the same
  values (``isal.isal_zlib.compress`` level 1 of 4 MiB pieces; one thread, N threads of one
  process, or N forked processes each compressing every Nth piece, timed from the start
  signal to the last process's end): the ceiling. Its time is the compression only (the
  values are read into memory first, not timed). In one process the threads share the
  interpreter (the GIL is released only inside ISA-L), so the processes row is the ceiling
  our workers (processes) are measured against: "of ceiling" = its time / ours.
- ``dsbackup --format go``: the same backup written in the Go tool's format (gowriter.py);
  compare it with the seed row, which writes the same kind of archive in pure Python.
- ``seed json+tar.gz-6``: the seed's way: chunks of 1000 records as JSON {key: base64(value)}
  entries in ``tarfile`` w:gz level 6; restore reads them back into a fresh LMDB.
- ``gzip.open-6``: the records streamed into one ``gzip.open`` level-6 file.
- ``tar|pigz -p N``, ``tar|igzip -T N``, ``tar|zstd -T N``: tar of the store's files (the
  flatfs copy of the blocks; the LMDB directory of the small records); restore extracts.
- ``restic``, ``borg``: a fresh repository (no encryption) backing up the same directory;
  restore is ``restic restore latest`` / ``borg extract`` into an empty directory.
"""

from __future__ import annotations

import argparse
import base64
import compileall
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

PY = sys.executable
ME = str(Path(__file__).resolve())
# GNU time reports the child's own peak RSS; os.wait4 on a child forked from this (large)
# process would report at least this process's RSS at the fork (Linux keeps the high-water
# mark across exec), so it is only the fallback.
TIME_BIN = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


# -- children (run as `compare.py --child NAME ...`) -----------------------------------------

def _open(uri: str, readonly: bool = True):
    from dsbackup.datastores import open_datastore

    return open_datastore(uri, readonly=readonly)


def _fsync(path: str) -> None:
    """Make a child's output durable, as our backup's archive is: the file, then its directory."""
    for p, flags in ((path, os.O_RDONLY), (os.path.dirname(os.path.abspath(path)),
                                           os.O_RDONLY | os.O_DIRECTORY)):
        fd = os.open(p, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _isal_pieces(src: str) -> list[memoryview]:
    with _open(src) as ds:
        data = b"".join(v for _, vals in ds.scan_batches() for v in vals)
    piece = 4 << 20
    return [memoryview(data)[i:i + piece] for i in range(0, len(data), piece)]


def child_isal_procs(src: str, procs: int, out: str) -> None:
    """ISA-L level 1 in ``procs`` forked processes, each compressing every ``procs``-th
    piece of the same values (already in memory, shared copy-on-write). Timed from the start
    signal (sent once all processes are forked) to the end of the last one."""
    from isal import isal_zlib

    pieces = _isal_pieces(src)
    go_r, go_w = os.pipe()
    kids: list[tuple[int, int]] = []
    for i in range(procs):
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: wait for the signal, compress its share, report size and end
            code = 1
            try:
                os.close(go_w)
                os.close(res_r)
                if not os.read(go_r, 1):  # the parent is gone: no signal will come
                    raise SystemExit(1)
                size = sum(len(isal_zlib.compress(p, 1)) for p in pieces[i::procs])
                end = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
                os.write(res_w, json.dumps({"size": size, "end": end}).encode())
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(res_w)
        kids.append((pid, res_r))
    os.close(go_r)
    t0 = time.perf_counter()
    os.write(go_w, b"g" * procs)
    size = 0
    end = t0
    cpu = 0.0  # the compressing processes' CPU seconds (user + system), fork to exit
    for pid, res_r in kids:
        with os.fdopen(res_r, "rb") as f:
            text = f.read()
        _, status, ru = os.wait4(pid, 0)
        cpu += ru.ru_utime + ru.ru_stime
        if os.waitstatus_to_exitcode(status) != 0 or not text:
            raise SystemExit(f"isal process {pid} failed (status {status})")
        info = json.loads(text)
        size += info["size"]
        end = max(end, info["end"])
    secs = end - t0
    Path(out).write_text(str(size))
    print(json.dumps({"seconds": secs, "size": size, "cpu": cpu}))


def child_isal(src: str, threads: int, out: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from isal import isal_zlib

    pieces = _isal_pieces(src)
    t0 = time.perf_counter()
    if threads == 1:
        size = sum(len(isal_zlib.compress(p, 1)) for p in pieces)
    else:
        with ThreadPoolExecutor(threads) as pool:
            size = sum(len(c) for c in pool.map(lambda p: isal_zlib.compress(p, 1), pieces))
    secs = time.perf_counter() - t0
    Path(out).write_text(str(size))
    print(json.dumps({"seconds": secs, "size": size}))


def child_seed_backup(src: str, out: str) -> None:
    import io
    import tarfile

    with _open(src) as ds, tarfile.open(out, "w:gz", compresslevel=6) as tar:
        chunk: dict[str, str] = {}
        n = 0

        def flush() -> None:
            nonlocal chunk, n
            body = json.dumps(chunk).encode()
            info = tarfile.TarInfo(f"chunk_{n:08d}.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
            chunk = {}
            n += 1

        for keys, values in ds.scan_batches():
            for k, v in zip(keys, values):
                chunk[k.decode()] = base64.b64encode(v).decode()
                if len(chunk) == 1000:
                    flush()
        if chunk:
            flush()
    _fsync(out)


def child_seed_restore(archive: str, target: str) -> None:
    import tarfile

    ds = _open(f"lmdb:{target}", readonly=False)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar:
                f = tar.extractfile(m)
                if f is None:
                    continue
                chunk = json.loads(f.read())
                ds.put_many([k.encode() for k in chunk],
                            [base64.b64decode(v) for v in chunk.values()])
        ds.sync("/")
    finally:
        ds.close()


def child_gzip_backup(src: str, out: str) -> None:
    import gzip

    with _open(src) as ds, gzip.open(out, "wb", compresslevel=6) as f:
        for keys, values in ds.scan_batches():
            for k, v in zip(keys, values):
                f.write(len(k).to_bytes(4, "little") + k + len(v).to_bytes(8, "little"))
                f.write(v)
    _fsync(out)


def child_gzip_restore(archive: str, target: str) -> None:
    import gzip

    ds = _open(f"lmdb:{target}", readonly=False)
    try:
        with gzip.open(archive, "rb") as f:
            keys: list[bytes] = []
            values: list[bytes] = []
            size = 0
            while head := f.read(4):
                k = f.read(int.from_bytes(head, "little"))
                v = f.read(int.from_bytes(f.read(8), "little"))
                keys.append(k)
                values.append(v)
                size += len(v)
                if size >= 64 << 20:
                    ds.put_many(keys, values)
                    keys, values, size = [], [], 0
            if keys:
                ds.put_many(keys, values)
        ds.sync("/")
    finally:
        ds.close()


CHILDREN = {"isal": child_isal, "isal-procs": child_isal_procs, "seed-backup": child_seed_backup,
            "seed-restore": child_seed_restore, "gzip-backup": child_gzip_backup,
            "gzip-restore": child_gzip_restore}


# -- measurement ----------------------------------------------------------------------------

@dataclass
class Sample:
    seconds: float
    rss_mib: float
    size: int | None


def run_measured(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[Sample, str]:
    """Run `cmd`, wait with os.wait4 for its wall time and peak RSS; returns its stdout."""
    rss_file = None
    if TIME_BIN:  # the child forks from the small `time`, so its high-water mark is its own
        fd, rss_file = tempfile.mkstemp(suffix=".rss")
        os.close(fd)
        cmd = [TIME_BIN, "-f", "%M", "-o", rss_file, *cmd]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        # its own process group, so a timeout or an interrupt stops a whole pipeline
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, start_new_session=True)
        deadline = t0 + timeout
        try:
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{' '.join(cmd)[:200]}: timed out after {timeout:.0f} s")
                time.sleep(0.002)
        except BaseException:
            os.killpg(p.pid, signal.SIGKILL)
            os.wait4(p.pid, 0)
            raise
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    rss_kib = ru.ru_maxrss
    if rss_file is not None:
        text = Path(rss_file).read_text().split()
        os.unlink(rss_file)
        if text and text[-1].isdigit():
            rss_kib = int(text[-1])
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)[:200]}: exit {p.returncode}: {stderr[-600:]}")
    return Sample(wall, rss_kib / 1024, None), stdout


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


@dataclass
class Row:
    op: str  # backup | restore | verify
    dataset: str
    tool: str
    cmd: list[str]
    raw_bytes: int
    output: Path | None = None  # what it writes (removed before each run; sized after)
    ours: bool = False
    internal_time: bool = False  # the child prints {"seconds": ...}: its timed section
    mkdir: bool = False  # create `output` as an empty directory before each run
    inputs: tuple[Path, ...] = ()  # read into the page cache before each run (see _warm)
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    def median(self, attr: str) -> float | None:
        vals = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return statistics.median(vals) if vals else None


@dataclass
class Skip:
    dataset: str
    tool: str
    reason: str


def _shell(script: str) -> list[str]:
    return ["bash", "-o", "pipefail", "-c", script]


def _durable(path: Path) -> str:
    """The shell step that makes what a row wrote under ``path`` durable: an fsync of every
    file and directory there (coreutils ``sync FILE...``), and of the directory holding it."""
    return f"find '{path}' -exec sync -- {{}} + && sync -- '{path.parent}'"


def build_rows(ds_name: str, src_uri: str, src: Path, raw: int, tar_dir: Path,
               tar_label: str, work: Path, workers: int, ops: set[str],
               flatfs_raw: int | None = None,
               baseline: Path | None = None) -> tuple[list[Row], list[Skip]]:
    """The rows for one data set: ``src_uri`` names the store (at ``src``), ``tar_dir`` is the
    copy the file-level tools read. Each row's ``inputs`` is what it reads (see _warm). With
    ``flatfs_raw`` (its key and value bytes), ``tar_dir`` is a flatfs store, and we also back
    it up and restore into a new flatfs: files to files, as the tar rows do. With ``baseline``
    (a package directory), its build runs our backup, restore and deep verify too."""
    rows: list[Row] = []
    skips: list[Skip] = []
    w = work / ds_name
    w.mkdir(parents=True, exist_ok=True)
    ours_arc = w / "ours.tar.gz"
    dsb = [PY, "-m", "dsbackup"]
    me = [PY, ME, "--child"]
    # the same backup encrypted (docs/ENCRYPTION.md): a raw key file, so no row pays scrypt
    key, enc_arc = w / "bench.key", w / "ours-enc.tar.gz"
    if not key.exists():
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
    enc = ["--key-file", str(key)]
    zst_arc = w / "ours-zstd.tar.gz"  # the opt-in zstd chunk codec (docs/FORMAT.md §11.6)
    if "backup" in ops:
        rows.append(Row("backup", ds_name, "dsbackup", dsb + ["backup", src_uri, str(ours_arc)],
                        raw, ours_arc, ours=True, inputs=(src,)))
        rows.append(Row("backup", ds_name, "dsbackup --encrypt",
                        dsb + ["backup", "--encrypt", *enc, src_uri, str(enc_arc)],
                        raw, enc_arc, inputs=(src,)))
        rows.append(Row("backup", ds_name, "dsbackup --codec zstd",
                        dsb + ["backup", "--codec", "zstd", src_uri, str(zst_arc)],
                        raw, zst_arc, inputs=(src,)))
        rows.append(Row("backup", ds_name, "isal-1 x1 (ceiling)",
                        me + ["isal", src_uri, "1", str(w / "isal1.size")], raw,
                        w / "isal1.size", internal_time=True, inputs=(src,)))
        if workers > 1:
            rows.append(Row("backup", ds_name, f"isal-1 x{workers} threads (ceiling)",
                            me + ["isal", src_uri, str(workers), str(w / "isalt.size")], raw,
                            w / "isalt.size", internal_time=True, inputs=(src,)))
            rows.append(Row("backup", ds_name, f"isal-1 in {workers} processes (ceiling)",
                            me + ["isal-procs", src_uri, str(workers), str(w / "isalp.size")],
                            raw, w / "isalp.size", internal_time=True, inputs=(src,)))
        rows.append(Row("backup", ds_name, "dsbackup --format go",
                        dsb + ["backup", "--format", "go", src_uri, str(w / "go.tar.gz")],
                        raw, w / "go.tar.gz", inputs=(src,)))
        rows.append(Row("backup", ds_name, "seed json+tar.gz-6",
                        me + ["seed-backup", src_uri, str(w / "seed.tar.gz")], raw,
                        w / "seed.tar.gz", inputs=(src,)))
        rows.append(Row("backup", ds_name, "gzip.open-6",
                        me + ["gzip-backup", src_uri, str(w / "stream.gz")], raw,
                        w / "stream.gz", inputs=(src,)))
    tars = [("pigz", f"pigz -p {workers}", f"pigz -d -p {workers}", "tar.gz", "pigz -t"),
            ("igzip", f"igzip -T {workers} -c", "igzip -d -c", "tar.gz", "igzip -t"),
            ("zstd", f"zstd -q -T{workers}", "zstd -q -d -c", "tar.zst", "zstd -q -t")]
    for tool, comp, decomp, ext, test in tars:
        label = f"tar|{tool} ({tar_label})"
        if shutil.which(tool) is None:
            skips.append(Skip(ds_name, label, f"{tool} is not installed"))
            continue
        arc = w / f"tar.{ext}"
        if "backup" in ops:
            rows.append(Row("backup", ds_name, label, _shell(
                f"tar -cf - -C '{tar_dir}' . | {comp} > '{arc}' && {_durable(arc)}"), raw, arc,
                inputs=(tar_dir,)))
        if "restore" in ops:
            dst = w / f"untar-{tool}"
            rows.append(Row("restore", ds_name, label, _shell(
                f"{decomp} < '{arc}' | tar -xf - -C '{dst}' && {_durable(dst)}"), raw, dst,
                mkdir=True, inputs=(arc,)))
        if "verify" in ops:
            rows.append(Row("verify", ds_name, label, _shell(f"{test} '{arc}'"), raw,
                            inputs=(arc,)))
    # their caches and keys live in the work directory (removed at the end), not in $HOME
    tool_env = (f"export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR='{work / 'restic-cache'}'"
                f" BORG_BASE_DIR='{work / 'borg-base'}'"
                " BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes"
                " BORG_RELOCATED_REPO_ACCESS_IS_OK=yes && ")
    for tool, init, backup, restore in (
            ("restic", "restic init -q --repo '{r}'", "restic backup -q --repo '{r}' '{d}'",
             "restic restore -q latest --repo '{r}' --target '{t}'"),
            ("borg", "borg init -e none '{r}'", "borg create '{r}::a' '{d}'",
             "cd '{t}' && borg extract '{r}::a'")):
        label = f"{tool} ({tar_label})"
        if shutil.which(tool) is None:
            skips.append(Skip(ds_name, label, f"{tool} is not installed"))
            continue
        repo = w / f"{tool}-repo"
        if "backup" in ops:
            script = (f"{tool_env}{init.format(r=repo)} && {backup.format(r=repo, d=tar_dir)}"
                      f" && {_durable(repo)}")
            rows.append(Row("backup", ds_name, label, _shell(script), raw, repo,
                            inputs=(tar_dir,)))
        if "restore" in ops:
            dst = w / f"{tool}-restored"
            script = f"{tool_env}{restore.format(r=repo, t=dst)} && {_durable(dst)}"
            rows.append(Row("restore", ds_name, label, _shell(script), raw, dst, mkdir=True,
                            inputs=(repo,)))
    flat_arc = w / "ours-flatfs.tar.gz"
    flat_label = f"dsbackup ({tar_label})"
    if flatfs_raw is not None and "backup" in ops:
        rows.append(Row("backup", ds_name, flat_label,
                        dsb + ["backup", f"flatfs:{tar_dir}", str(flat_arc)], flatfs_raw,
                        flat_arc, inputs=(tar_dir,)))
    if flatfs_raw is not None and "restore" in ops:
        rows.append(Row("restore", ds_name, flat_label,
                        dsb + ["restore", str(flat_arc), f"flatfs:{w / 'flatfs-restored'}"],
                        flatfs_raw, w / "flatfs-restored", inputs=(flat_arc,)))
    if "restore" in ops:
        rows.append(Row("restore", ds_name, "dsbackup",
                        dsb + ["restore", str(ours_arc), f"lmdb:{w / 'restored'}"], raw,
                        w / "restored", ours=True, inputs=(ours_arc,)))
        rows.append(Row("restore", ds_name, "dsbackup --encrypt",
                        dsb + ["restore", *enc, str(enc_arc), f"lmdb:{w / 'restored-enc'}"],
                        raw, w / "restored-enc", inputs=(enc_arc,)))
        rows.append(Row("restore", ds_name, "dsbackup --codec zstd",
                        dsb + ["restore", str(zst_arc), f"lmdb:{w / 'restored-zstd'}"],
                        raw, w / "restored-zstd", inputs=(zst_arc,)))
        rows.append(Row("restore", ds_name, "seed json+tar.gz-6",
                        me + ["seed-restore", str(w / "seed.tar.gz"), str(w / "seed-restored")],
                        raw, w / "seed-restored", inputs=(w / "seed.tar.gz",)))
        rows.append(Row("restore", ds_name, "gzip.open-6",
                        me + ["gzip-restore", str(w / "stream.gz"), str(w / "gz-restored")],
                        raw, w / "gz-restored", inputs=(w / "stream.gz",)))
    if "verify" in ops:
        rows.append(Row("verify", ds_name, "dsbackup (deep)", dsb + ["verify", str(ours_arc)],
                        raw, ours=True, inputs=(ours_arc,)))
    if baseline is not None:
        base = ["env", f"PYTHONPATH={baseline}", PY, "-m", "dsbackup"]
        base_arc = w / "baseline.tar.gz"
        if "backup" in ops:
            rows.append(Row("backup", ds_name, "dsbackup [baseline]",
                            base + ["backup", src_uri, str(base_arc)], raw, base_arc,
                            inputs=(src,)))
        if "restore" in ops:
            rows.append(Row("restore", ds_name, "dsbackup [baseline]",
                            base + ["restore", str(ours_arc), f"lmdb:{w / 'restored-base'}"],
                            raw, w / "restored-base", inputs=(ours_arc,)))
        if "restore" in ops and flatfs_raw is not None:
            rows.append(Row("restore", ds_name, f"{flat_label} [baseline]",
                            base + ["restore", str(flat_arc),
                                    f"flatfs:{w / 'flatfs-restored-base'}"],
                            flatfs_raw, w / "flatfs-restored-base", inputs=(flat_arc,)))
        if "verify" in ops:
            rows.append(Row("verify", ds_name, "dsbackup (deep) [baseline]",
                            base + ["verify", str(ours_arc)], raw, inputs=(ours_arc,)))
    if "verify" in ops:
        rows.append(Row("verify", ds_name, "dsbackup --encrypt (deep)",
                        dsb + ["verify", *enc, str(enc_arc)], raw, inputs=(enc_arc,)))
        rows.append(Row("verify", ds_name, "dsbackup --codec zstd (deep)",
                        dsb + ["verify", str(zst_arc)], raw, inputs=(zst_arc,)))
        rows.append(Row("verify", ds_name, "gzip -t (seed archive)",
                        ["gzip", "-t", str(w / "seed.tar.gz")], raw,
                        inputs=(w / "seed.tar.gz",)))
    return rows, skips


def _warm(paths: tuple[Path, ...]) -> None:
    """Read every file under ``paths`` (untimed) so the row starts with its input in the page
    cache. The "warm runs" this table promises do not hold by themselves everywhere: the
    development VM's host reclaims page cache it finds idle (DAMON "pageout"), and after a
    full compare run only 12 of the small store's 515 MB were still cached (its backup took
    3.1 s from there, 2.5 s warm)."""
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                while fh.read(8 << 20):
                    pass


def measure(cmd: list[str], env: dict[str, str], timeout: float, *, output: Path | None = None,
            mkdir: bool = False, inputs: tuple[Path, ...] = (),
            internal_time: bool = False) -> Sample:
    """One run of a row: ``output`` removed first (re-created empty with ``mkdir``), earlier
    rows' dirty pages synced, ``inputs`` read into the page cache, then ``cmd`` measured; with
    ``internal_time`` the child's own {"seconds", "size"} (its last stdout line) are used."""
    if output is not None:
        _rm(output)
        if mkdir:
            output.mkdir(parents=True)
    # the previous row's dirty pages (tar and the seed never fsync) reach the disk now, not
    # during this row's own writes and fsync
    os.sync()
    _warm(inputs)
    s, stdout = run_measured(cmd, env, timeout)
    if internal_time:
        info = json.loads(stdout.strip().splitlines()[-1])
        s.seconds, s.size = info["seconds"], info["size"]
    return s


def run_rounds(rows: list[Row], runs: int, env: dict[str, str], timeout: float) -> None:
    for r in range(runs):
        for op in ("backup", "restore", "verify"):
            phase = [row for row in rows if row.op == op and row.error is None]
            for row in (phase if r % 2 == 0 else phase[::-1]):
                try:
                    s = measure(row.cmd, env, timeout, output=row.output, mkdir=row.mkdir,
                                inputs=row.inputs, internal_time=row.internal_time)
                except (RuntimeError, TimeoutError, OSError) as exc:
                    row.error = str(exc)
                    print(f"  {row.dataset} {row.op} {row.tool}: FAILED {exc}", file=sys.stderr)
                    continue
                if not row.internal_time and row.output is not None and row.op == "backup":
                    s.size = _du(row.output)
                row.samples.append(s)
                print(f"  round {r + 1}: {row.dataset:7} {row.op:7} {row.tool:34} "
                      f"{s.seconds:8.3f} s", file=sys.stderr, flush=True)
            if op == "restore":  # restored copies are big; keep archives only
                for row in phase:
                    if row.output is not None:
                        _rm(row.output)


def table(rows: list[Row]) -> tuple[list[dict], str]:
    out: list[dict] = []
    ds_order = {d: i for i, d in enumerate(dict.fromkeys(r.dataset for r in rows))}
    op_order = {"backup": 0, "restore": 1, "verify": 2}
    rows = sorted(rows, key=lambda r: (ds_order[r.dataset], op_order[r.op], not r.ours))
    ours = {(r.dataset, r.op): r.median("seconds") for r in rows if r.ours}
    for r in rows:
        secs = r.median("seconds")
        base = ours.get((r.dataset, r.op))
        out.append({
            "dataset": r.dataset, "op": r.op, "tool": r.tool, "ours": r.ours,
            "runs": len(r.samples), "seconds": secs,
            "seconds_all": [s.seconds for s in r.samples],
            "MB_s": r.raw_bytes / secs / 1e6 if secs else None,
            "x_ours": secs / base if secs and base else None,
            "compressed_bytes": r.median("size"),
            "peak_rss_mib": r.median("rss_mib"), "error": r.error,
        })
    lines = [f"{'dataset':8} {'op':8} {'tool':34} {'seconds':>8} {'MB/s':>7} {'x ours':>7} "
             f"{'size MB':>8} {'RSS MiB':>8}"]
    for d in out:
        if d["error"]:
            lines.append(f"{d['dataset']:8} {d['op']:8} {d['tool']:34} FAILED: "
                         f"{d['error'][:80]}")
            continue
        size = f"{d['compressed_bytes'] / 1e6:8.1f}" if d["compressed_bytes"] else f"{'-':>8}"
        lines.append(f"{d['dataset']:8} {d['op']:8} {d['tool']:34} {d['seconds']:8.3f} "
                     f"{d['MB_s']:7.0f} {d['x_ours']:7.2f} {size} {d['peak_rss_mib']:8.0f}")
    return out, "\n".join(lines)


def encryption_ratios(rows: list[Row]) -> dict[str, dict]:
    """Per data set and operation: the ``--encrypt`` row's time over ours (plain), from the
    medians and round by round (the two rows of a round ran next to each other)."""
    out: dict[str, dict] = {}
    for ours in (r for r in rows if r.ours and r.samples):
        for r in rows:
            if (r.dataset, r.op) != (ours.dataset, ours.op) or not r.samples \
                    or not r.tool.startswith("dsbackup --encrypt"):
                continue
            per_round = [e.seconds / o.seconds for e, o in zip(r.samples, ours.samples)]
            out.setdefault(ours.dataset, {})[ours.op] = {
                "plain_seconds": ours.median("seconds"), "encrypted_seconds": r.median("seconds"),
                "ratio": r.median("seconds") / ours.median("seconds"),
                "ratio_per_round": per_round,
                "median_of_round_ratios": statistics.median(per_round)}
    return out


def ceiling_ratios(rows: list[Row]) -> dict[str, dict]:
    """Per data set: our backup as a fraction of each ISA-L ceiling row ("of ceiling" = its
    time / ours: 1.0 means our whole backup runs as fast as compression alone), from the
    medians and round by round (the rows of one round ran next to each other)."""
    out: dict[str, dict] = {}
    for ours in (r for r in rows if r.ours and r.op == "backup" and r.samples):
        d: dict = {"ours_seconds": ours.median("seconds")}
        for r in rows:
            if r.dataset != ours.dataset or "(ceiling)" not in r.tool or not r.samples:
                continue
            kind = ("processes" if "processes" in r.tool else
                    "threads" if "threads" in r.tool else "x1")
            per_round = [c.seconds / o.seconds for c, o in zip(r.samples, ours.samples)]
            d[kind] = {"tool": r.tool, "seconds": r.median("seconds"),
                       "of_ceiling": r.median("seconds") / d["ours_seconds"],
                       "of_ceiling_per_round": per_round}
        out[ours.dataset] = d
    return out


def tune_check(uri: str, raw: int, work: Path, env: dict[str, str], runs: int,
               timeout: float) -> dict:
    """`dsbackup tune` on the store, then real backups at its recommendation: the projection's
    error (must be within +-25% of time and size)."""
    s, stdout = run_measured([PY, "-m", "dsbackup", "tune", uri, "--json"], env, timeout)
    res = json.loads(stdout)["tune"]
    rec = res["recommended"]
    out = work / "tuned.tar.gz"
    cmd = [PY, "-m", "dsbackup", "backup", uri, str(out), "--json",
           *res["recommended_options"]]
    times = []
    walls = []
    size = 0
    for _ in range(runs):
        _rm(out)
        b, stdout = run_measured(cmd, env, timeout)
        # the backup's own duration: the projection is of the backup, not interpreter start-up
        times.append(json.loads(stdout)["backup"]["statistics"]["duration_s"])
        walls.append(b.seconds)
        size = _du(out)
    _rm(out)
    actual = min(times)  # best of runs, as tune's calibration: load from others only slows
    return {"tune_seconds": s.seconds, "options": res["recommended_options"],
            "goal": res["goal"], "projected_seconds": rec["projected_seconds"],
            "actual_seconds": actual, "actual_seconds_all": times,
            "actual_seconds_median": statistics.median(times),
            "process_wall_seconds_all": walls,
            "projected_bytes": rec["projected_bytes"], "actual_bytes": size,
            "time_error": rec["projected_seconds"] / actual - 1,
            "time_error_vs_median": rec["projected_seconds"] / statistics.median(times) - 1,
            "size_error": rec["projected_bytes"] / size - 1, "raw_bytes": raw,
            "fits": res["fits"], "sample_bytes": res["sample_bytes"]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        name, *rest = argv[1:]
        fn = CHILDREN[name]
        fn(*(int(a) if a.isdigit() else a for a in rest))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="blocks,small")
    ap.add_argument("--ops", default="backup,restore,verify",
                    help="operations to compare (none: only --tune-check)")
    ap.add_argument("--runs", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="threads for pigz/zstd/igzip, threads and processes for the ISA-L "
                    "ceiling rows (default CPUs)")
    ap.add_argument("--tools", default=None,
                    help="only these rows (comma-separated tool names as in the table, e.g. "
                    "'dsbackup,dsbackup --encrypt' for the cost of encryption)")
    ap.add_argument("--timeout", type=float, default=1800, help="per command, seconds")
    ap.add_argument("--json", type=Path, default=None,
                    help="results file (default benchmarks/results/compare-<time>.json)")
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a dsbackup package directory (holding dsbackup/) whose build also "
                    "runs our backup, restore and deep verify: rows '... [baseline]'")
    ap.add_argument("--tune-check", action="store_true",
                    help="also run `dsbackup tune` on the blocks store and compare its "
                    "projection with real backups at the recommended setting")
    args = ap.parse_args(argv)
    import benchdata

    ops = set(args.ops.split(","))  # "none": no rows (e.g. only --tune-check)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # clean up the work directory when killed
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    # byte-compiled as an installed package is, even where PYTHONDONTWRITEBYTECODE is set:
    # otherwise every CLI row would compile dsbackup's sources at start-up (~0.05 s)
    compileall.compile_dir(str(ROOT / "src" / "dsbackup"), quiet=1)
    if args.baseline is not None:
        compileall.compile_dir(str(args.baseline / "dsbackup"), quiet=1)
    work = Path(tempfile.mkdtemp(prefix="dsbackup-compare-", dir=args.work_dir))
    rows: list[Row] = []
    skips: list[Skip] = []
    info: dict = {}
    try:
        for name in args.datasets.split(","):
            t0 = time.perf_counter()
            flatfs_raw = None
            if name == "blocks":
                d = benchdata.blocks_lmdb()
                flat = benchdata.blocks_flatfs()
                tar_dir, label, flatfs_raw = flat.path, "flatfs copy", flat.raw_bytes
            elif name == "small":
                d = benchdata.small_lmdb()
                tar_dir, label = d.path, "LMDB dir"
            else:
                ap.error(f"unknown data set {name!r} (blocks, small)")
            info[name] = {"records": d.records, "raw_bytes": d.raw_bytes, "uri": d.uri}
            print(f"{name}: {d.records} records, {d.raw_bytes / 1e6:.1f} MB "
                  f"(ready in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
            r, s = build_rows(name, d.uri, d.path, d.raw_bytes, tar_dir, label, work,
                              args.workers, ops, flatfs_raw, args.baseline)
            rows += r
            skips += s
        if args.tools is not None:
            keep = set(args.tools.split(","))
            rows = [r for r in rows if r.tool in keep]
            skips = [s for s in skips if s.tool in keep]
        load_start = os.getloadavg()
        run_rounds(rows, args.runs, env, args.timeout)
        if args.tune_check and "blocks" in info:
            check = tune_check(info["blocks"]["uri"], info["blocks"]["raw_bytes"], work, env,
                               args.runs, args.timeout)
            info["blocks"]["tune_check"] = check
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results, text = table(rows)
    print(text)
    ceilings = ceiling_ratios(rows)
    for name, d in ceilings.items():
        parts = [f"{d[k]['of_ceiling']:.2f} of {d[k]['tool'].removesuffix(' (ceiling)')} "
                 f"(rounds {', '.join(f'{x:.2f}' for x in d[k]['of_ceiling_per_round'])})"
                 for k in ("processes", "threads", "x1") if k in d]
        if parts:  # (none when --tools left the ceiling rows out)
            print(f"{name} backup: ours = " + "; ".join(parts))
    encryption = encryption_ratios(rows)
    for name, ops in encryption.items():
        for op, d in ops.items():
            print(f"{name} {op}: --encrypt / plain = {d['ratio']:.3f} (medians; rounds "
                  f"{', '.join(f'{x:.2f}' for x in d['ratio_per_round'])})")
    for s in skips:
        print(f"skipped: {s.dataset} {s.tool}: {s.reason}")
    tc = info.get("blocks", {}).get("tune_check")
    if tc:
        print(f"tune check (blocks, goal {tc['goal']}, {' '.join(tc['options'])}): projected "
              f"{tc['projected_seconds']:.2f} s / {tc['projected_bytes'] / 1e6:.1f} MB, actual "
              f"{tc['actual_seconds']:.2f} s / {tc['actual_bytes'] / 1e6:.1f} MB: error "
              f"{tc['time_error']:+.1%} time (vs the median run "
              f"{tc.get('time_error_vs_median', float('nan')):+.1%}), {tc['size_error']:+.1%} "
              "size (bound +-25%)")
    doc = {
        "schema": 2, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "scale": benchdata.scale(), "runs": args.runs, "workers": args.workers,
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "datasets": info,
        "rows": results, "ceiling": ceilings, "encryption": encryption, "durable": True,
        "skipped": [s.__dict__ for s in skips],
    }
    path = args.json or HERE / "results" / f"compare-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    print(f"results: {path}")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
