"""Every subcommand against a table of bad inputs, each as a real subprocess: no traceback, the
documented exit code (docs/EXIT_CODES.md), and one message line naming the thing at fault."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.writer import ArchiveWriter
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig


@dataclass
class Case:
    id: str
    argv: list[str]  # {w}: the workspace directory
    code: int
    names: str  # what the message line must contain ({w} expanded)
    needs: str = ""  # "ro" / "full": a mount made by the fixture, skipped without one
    report: bool = False  # the command prints a report (verify), not one "error:" line


def _mount(where: Path, options: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                       capture_output=True)
    return r.returncode == 0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    w = tmp_path_factory.mktemp("bad")
    store = w / "store"
    datasets.write_lmdb(str(store), iter(sorted(
        [(b"/blocks/K%04d" % i, os.urandom(200)) for i in range(100)]
        + [(b"/pins/%03d" % i, b"pin") for i in range(10)])))
    mgr = BackupManager(BackupConfig(chunk_size=20, workers=1))
    mgr.create_backup(f"lmdb:{store}", w / "good.tar.gz")
    mgr.create_backup(f"lmdb:{store}", w / "go.tar.gz", format="go")  # the Go tool's format
    # an incremental whose parent (of another state than good.tar.gz) has gone
    (w / "pdir").mkdir()
    older = w / "older"
    datasets.write_lmdb(str(older), iter([(b"/blocks/K%04d" % i, b"old") for i in range(50)]))
    mgr.create_backup(f"lmdb:{older}", w / "pdir" / "full.tar.gz")
    mgr.create_backup(f"lmdb:{store}", w / "inc.tar.gz", parent=w / "pdir" / "full.tar.gz")
    (w / "pdir" / "full.tar.gz").rename(w / "pdir" / "moved.tar.gz")
    # keys flatfs can hold, large enough (random) to fill a 64 KiB file system
    upper = w / "upper"
    datasets.write_lmdb(str(upper), iter(sorted(
        [(b"/K%04d" % i, os.urandom(2048)) for i in range(200)])))
    mgr.create_backup(f"lmdb:{upper}", w / "upper.tar.gz")
    longkey = w / "longkey"
    datasets.write_lmdb(str(longkey), iter([(b"/" + b"A" * 300, b"v")]))
    mgr.create_backup(f"lmdb:{longkey}", w / "longkey.tar.gz")
    (w / "garbage.tar.gz").write_bytes(os.urandom(5000))
    (w / "empty.tar.gz").write_bytes(b"")
    (w / "truncated.tar.gz").write_bytes((w / "good.tar.gz").read_bytes()[:3000])
    (w / "adir.tar.gz").mkdir()
    os.mkfifo(w / "fifo.tar.gz")  # no writer: opening it for reading would wait for ever
    (w / "afile").write_text("not a datastore\n")
    (w / "emptydir").mkdir()
    # a checksum-consistent archive whose manifest `created` is a number
    with ArchiveReader(w / "good.tar.gz") as r:
        manifest = dict(r.manifest)
    manifest["created"] = 5
    with ArchiveWriter(w / "created_int.tar.gz", manifest=manifest) as aw:
        aw.finish()
    pr = w / "prune"
    pr.mkdir()
    shutil.copy(w / "created_int.tar.gz", pr / "x_20260101_000000.tar.gz")
    shutil.copy(w / "good.tar.gz", pr / "x_20260102_000000.tar.gz")
    (w / "bad.toml").write_text("[scheduler\nbackup_dir = \n")
    (w / "sched.toml").write_text(
        f'[scheduler]\nbackup_dir = "{w}/sb"\nstate_dir = "{w}/ss"\n\n'
        f'[[schedule]]\nid = "s"\ncron = "@daily"\nsource = "lmdb:{store}"\n')
    (w / "plan.toml").write_text("this is [ not a plan\n")
    (w / "empty.toml").write_text("")
    mounted = []
    if _mount(w / "ro", "ro,size=1m"):
        mounted.append(w / "ro")
    if _mount(w / "full", "size=64k"):
        mounted.append(w / "full")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        yield {"w": w, "mounts": {p.name for p in mounted}, "busy_port": busy.getsockname()[1]}
    finally:
        busy.close()
        for p in mounted:
            subprocess.run(["umount", "-l", str(p)], capture_output=True)


NO_SCHEME = "unknown datastore scheme 'nosuch'"

CASES = [
    # global
    Case("no-command", [], 2, "give a command"),
    Case("unknown-command", ["frobnicate"], 2, "frobnicate"),
    Case("bad-umask", ["--umask", "999", "inspect", "{w}/good.tar.gz"], 2, "--umask"),
    Case("bad-umask-after", ["inspect", "{w}/good.tar.gz", "--umask", "x"], 2, "--umask"),
    Case("unknown-option", ["ls", "{w}/good.tar.gz", "--frob"], 2, "--frob"),
    # backup
    Case("backup-missing-source", ["backup", "{w}/nosuch", "{w}/o1.tar.gz"], 2, "{w}/nosuch"),
    Case("backup-unknown-scheme", ["backup", "nosuch:{w}/store", "{w}/o2.tar.gz"], 2, NO_SCHEME),
    Case("backup-empty-uri", ["backup", "lmdb:", "{w}/o3.tar.gz"], 2, "lmdb:"),
    Case("backup-dir-not-store", ["backup", "{w}/emptydir", "{w}/o4.tar.gz"], 2, "{w}/emptydir"),
    Case("backup-file-not-store", ["backup", "{w}/afile", "{w}/o5.tar.gz"], 2, "{w}/afile"),
    Case("backup-archive-dir-missing", ["backup", "lmdb:{w}/store", "{w}/nodir/o.tar.gz"], 2,
         "{w}/nodir"),
    Case("backup-archive-is-dir", ["backup", "lmdb:{w}/store", "{w}/adir.tar.gz"], 2,
         "{w}/adir.tar.gz"),
    Case("backup-level-text", ["backup", "lmdb:{w}/store", "{w}/o6.tar.gz", "--level", "x"], 2,
         "--level"),
    Case("backup-level-range", ["backup", "lmdb:{w}/store", "{w}/o7.tar.gz", "--level", "42"],
         2, "42"),
    Case("backup-workers-text", ["backup", "lmdb:{w}/store", "{w}/o8.tar.gz", "--workers", "a"],
         2, "--workers"),
    Case("backup-timeout-text", ["backup", "lmdb:{w}/store", "{w}/o9.tar.gz", "--timeout", "t"],
         2, "--timeout"),
    Case("backup-chunk-size-huge", ["backup", "lmdb:{w}/store", "{w}/o13.tar.gz", "--chunk-size",
                                    "99999999999999999999"], 2, "chunk_size must be"),
    Case("backup-timeout-nan", ["backup", "lmdb:{w}/store", "{w}/o14.tar.gz", "--timeout", "nan"],
         2, "timeout must be"),
    Case("backup-timeout-inf", ["backup", "lmdb:{w}/store", "{w}/o15.tar.gz", "--timeout", "inf"],
         2, "timeout must be"),
    Case("backup-parent-missing", ["backup", "lmdb:{w}/store", "{w}/o10.tar.gz", "--parent",
                                   "{w}/nosuch.tar.gz"], 2, "{w}/nosuch.tar.gz"),
    Case("backup-parent-missing-source", ["backup", "lmdb:{w}/nosuch", "{w}/o19.tar.gz",
                                          "--parent", "{w}/good.tar.gz"], 2,
         "{w}/nosuch: no LMDB environment (data.mdb missing)"),
    Case("backup-parent-go-format", ["backup", "lmdb:{w}/store", "{w}/o16.tar.gz", "--parent",
                                     "{w}/go.tar.gz"], 2, "{w}/go.tar.gz: an archive of the Go"),
    Case("backup-parent-garbage", ["backup", "lmdb:{w}/store", "{w}/o11.tar.gz", "--parent",
                                   "{w}/garbage.tar.gz"], 2, "{w}/garbage.tar.gz"),
    Case("backup-exclude-unanchored", ["backup", "lmdb:{w}/store", "{w}/o12.tar.gz",
                                       "--exclude", "pins/*"], 1, "pins/*"),
    Case("backup-into-ro", ["backup", "lmdb:{w}/store", "{w}/ro/o.tar.gz"], 2, "{w}/ro",
         needs="ro"),
    Case("backup-disk-full", ["backup", "lmdb:{w}/upper", "{w}/full/u.tar.gz"], 2,
         "{w}/full/u.tar.gz: no space left on {w}/full", needs="full"),
    Case("backup-go-disk-full", ["backup", "lmdb:{w}/upper", "{w}/full/g.tar.gz", "--format",
                                 "go"], 2, "{w}/full/g.tar.gz: no space left on {w}/full",
         needs="full"),
    Case("consolidate-disk-full", ["consolidate", "{w}/upper.tar.gz", "{w}/full/c.tar.gz"], 2,
         "{w}/full/c.tar.gz: no space left on {w}/full", needs="full"),
    # restore
    Case("restore-missing-archive", ["restore", "{w}/nosuch.tar.gz", "lmdb:{w}/r1"], 2,
         "{w}/nosuch.tar.gz"),
    Case("restore-archive-is-dir", ["restore", "{w}/adir.tar.gz", "lmdb:{w}/r2"], 2,
         "{w}/adir.tar.gz"),
    Case("restore-fifo", ["restore", "{w}/fifo.tar.gz", "lmdb:{w}/r13"], 2,
         "{w}/fifo.tar.gz: is a pipe"),
    Case("restore-garbage", ["restore", "{w}/garbage.tar.gz", "lmdb:{w}/r3"], 2,
         "{w}/garbage.tar.gz"),
    Case("restore-empty-archive", ["restore", "{w}/empty.tar.gz", "lmdb:{w}/r4"], 3,
         "{w}/empty.tar.gz"),
    Case("restore-truncated", ["restore", "{w}/truncated.tar.gz", "lmdb:{w}/r5"], 3,
         "{w}/truncated.tar.gz"),
    Case("restore-not-empty", ["restore", "{w}/good.tar.gz", "lmdb:{w}/store"], 2,
         "--overwrite or --skip-existing"),
    Case("restore-bare-missing-path", ["restore", "{w}/good.tar.gz", "{w}/r6"], 2, "{w}/r6"),
    Case("restore-lmdb-onto-file", ["restore", "{w}/good.tar.gz", "lmdb:{w}/afile"], 2,
         "{w}/afile: not a directory (LMDB is a directory)"),
    Case("restore-leveldb-onto-file", ["restore", "{w}/good.tar.gz", "leveldb:{w}/afile"], 2,
         "{w}/afile: not a directory (LevelDB is a directory)"),
    Case("restore-unknown-scheme", ["restore", "{w}/good.tar.gz", "nosuch:{w}/r7"], 2,
         NO_SCHEME),
    Case("restore-missing-parent", ["restore", "{w}/inc.tar.gz", "lmdb:{w}/r8"], 2,
         "full.tar.gz"),
    Case("restore-pattern-unanchored", ["restore", "{w}/good.tar.gz", "lmdb:{w}/r9",
                                        "--pattern", "pins/*"], 1, "pins/*"),
    Case("restore-pattern-empty", ["restore", "{w}/good.tar.gz", "lmdb:{w}/r14", "--pattern", ""],
         2, "empty pattern"),
    Case("backup-exclude-empty", ["backup", "lmdb:{w}/store", "{w}/o17.tar.gz", "--exclude",
                                  ""], 2, "empty exclude pattern"),
    Case("restore-prefix-nothing", ["restore", "{w}/good.tar.gz", "lmdb:{w}/r10",
                                    "--prefix", "/nothing"], 1, "--prefix /nothing"),
    Case("restore-overwrite-and-skip", ["restore", "{w}/good.tar.gz", "lmdb:{w}/r11",
                                        "--overwrite", "--skip-existing"], 2, "--skip-existing"),
    Case("restore-flatfs-long-key", ["restore", "{w}/longkey.tar.gz", "flatfs:{w}/r12"], 2,
         "too long for flatfs"),
    Case("restore-ro-lmdb", ["restore", "{w}/good.tar.gz", "lmdb:{w}/ro/t"], 2, "{w}/ro/t",
         needs="ro"),
    Case("restore-ro-flatfs", ["restore", "{w}/upper.tar.gz", "flatfs:{w}/ro/f"], 2,
         "{w}/ro/f", needs="ro"),
    Case("restore-flatfs-disk-full", ["restore", "{w}/upper.tar.gz", "flatfs:{w}/full/f"], 2,
         "no space left on {w}/full", needs="full"),
    Case("restore-leveldb-disk-full", ["restore", "{w}/upper.tar.gz", "leveldb:{w}/full/l"], 2,
         "no space left on {w}/full", needs="full"),
    # verify
    Case("verify-missing", ["verify", "{w}/nosuch.tar.gz"], 2, "{w}/nosuch.tar.gz"),
    Case("verify-dir", ["verify", "{w}/adir.tar.gz"], 2, "{w}/adir.tar.gz"),
    Case("verify-fifo", ["verify", "{w}/fifo.tar.gz"], 2, "{w}/fifo.tar.gz: is a pipe"),
    Case("verify-garbage", ["verify", "{w}/garbage.tar.gz"], 3, "{w}/garbage.tar.gz"),
    Case("verify-empty", ["verify", "{w}/empty.tar.gz"], 3, "{w}/empty.tar.gz"),
    Case("verify-truncated", ["verify", "{w}/truncated.tar.gz"], 3, "{w}/truncated.tar.gz"),
    Case("verify-sample-above-1", ["verify", "--sample", "1.5", "{w}/good.tar.gz"], 2,
         "--sample"),
    Case("verify-sample-negative", ["verify", "--sample", "-0.1", "{w}/good.tar.gz"], 2,
         "--sample"),
    Case("verify-sample-text", ["verify", "--sample", "half", "{w}/good.tar.gz"], 2, "half"),
    Case("verify-quick-and-sample", ["verify", "--quick", "--sample", "0.1",
                                     "{w}/good.tar.gz"], 2, "--sample"),
    Case("verify-missing-parent", ["verify", "{w}/inc.tar.gz"], 2, "full.tar.gz",
         report=True),
    Case("verify-workers-text", ["verify", "{w}/good.tar.gz", "--workers", "two"], 2,
         "--workers"),
    # inspect
    Case("inspect-missing", ["inspect", "{w}/nosuch.tar.gz"], 2, "{w}/nosuch.tar.gz"),
    Case("inspect-dir", ["inspect", "{w}/adir.tar.gz"], 2, "is a directory"),
    Case("inspect-fifo", ["inspect", "{w}/fifo.tar.gz"], 2, "{w}/fifo.tar.gz: is a pipe"),
    Case("inspect-garbage", ["inspect", "{w}/garbage.tar.gz"], 2, "not a gzip file"),
    Case("inspect-empty", ["inspect", "{w}/empty.tar.gz"], 3, "{w}/empty.tar.gz"),
    Case("inspect-created-int", ["inspect", "{w}/created_int.tar.gz"], 3, "'created'"),
    Case("inspect-store-not-archive", ["inspect", "{w}/store/data.mdb"], 2, "data.mdb"),
    # ls
    Case("ls-missing", ["ls", "{w}/nosuch.tar.gz"], 2, "{w}/nosuch.tar.gz"),
    Case("ls-dir", ["ls", "{w}/adir.tar.gz"], 2, "is a directory"),
    Case("ls-fifo", ["ls", "{w}/fifo.tar.gz"], 2, "{w}/fifo.tar.gz: is a pipe"),
    Case("ls-garbage", ["ls", "{w}/garbage.tar.gz"], 2, "{w}/garbage.tar.gz"),
    # a key prefix is not a prefix of keys: --prefix /blocks/K00 has no children here (the
    # hint said "keys start with /", which it does)
    Case("ls-prefix-not-a-key", ["ls", "{w}/good.tar.gz", "--prefix", "/blocks/K00"], 1,
         "selects the children of KEY (/blocks/K00/...)"),
    Case("restore-prefix-not-a-key", ["restore", "{w}/good.tar.gz", "lmdb:{w}/r16", "--prefix",
                                      "blocks/K00"], 1,
         "selects the children of KEY (/blocks/K00/...)"),
    Case("ls-prefix-nothing", ["ls", "{w}/good.tar.gz", "--prefix", "/nothing"], 1,
         "--prefix /nothing"),
    Case("ls-missing-parent", ["ls", "{w}/inc.tar.gz"], 2, "full.tar.gz"),
    # consolidate
    Case("consolidate-missing", ["consolidate", "{w}/nosuch.tar.gz", "{w}/c1.tar.gz"], 2,
         "{w}/nosuch.tar.gz"),
    Case("consolidate-out-dir-missing", ["consolidate", "{w}/good.tar.gz",
                                         "{w}/nodir/c.tar.gz"], 2, "{w}/nodir"),
    Case("consolidate-out-is-dir", ["consolidate", "{w}/good.tar.gz", "{w}/adir.tar.gz"], 2,
         "{w}/adir.tar.gz"),
    Case("consolidate-fifo", ["consolidate", "{w}/fifo.tar.gz", "{w}/c5.tar.gz"], 2,
         "{w}/fifo.tar.gz: is a pipe"),
    Case("consolidate-go-format", ["consolidate", "{w}/go.tar.gz", "{w}/c7.tar.gz"], 2,
         "{w}/go.tar.gz: an archive of the Go"),
    Case("consolidate-garbage", ["consolidate", "{w}/garbage.tar.gz", "{w}/c2.tar.gz"], 2,
         "{w}/garbage.tar.gz"),
    Case("consolidate-missing-parent", ["consolidate", "{w}/inc.tar.gz", "{w}/c3.tar.gz"], 2,
         "full.tar.gz"),
    Case("consolidate-workers-text", ["consolidate", "{w}/good.tar.gz", "{w}/c4.tar.gz",
                                      "--workers", "many"], 2, "--workers"),
    Case("consolidate-workers-zero", ["consolidate", "{w}/good.tar.gz", "{w}/c6.tar.gz",
                                      "--workers", "0"], 2, "workers must be a positive"),
    # prune
    Case("prune-missing-dir", ["prune", "{w}/nosuch", "--keep-last", "1"], 2, "{w}/nosuch"),
    Case("prune-file", ["prune", "{w}/afile", "--keep-last", "1"], 2, "{w}/afile"),
    Case("prune-no-rule", ["prune", "{w}/prune"], 2, "--keep-last"),
    Case("prune-s3-no-bucket", ["prune", "s3://", "--keep-last", "1"], 2,
         "argument directory: s3://: an S3 location is s3://BUCKET/KEY (no bucket given)"),
    Case("prune-state-missing", ["prune", "{w}/prune", "--keep-last", "1", "--state",
                                 "{w}/nostate"], 2, "{w}/nostate"),
    Case("prune-name-nothing", ["prune", "{w}/prune", "--keep-last", "1", "--name", "nosuch",
                                "--dry-run"], 1, "nosuch"),
    Case("prune-max-age-text", ["prune", "{w}/prune", "--max-age", "soon"], 2, "soon"),
    Case("prune-max-age-overflow", ["prune", "{w}/prune", "--max-age", "99999999999999d"], 2,
         "99999999999999d"),
    Case("prune-max-age-before-year-one", ["prune", "{w}/prune", "--max-age", "10000y",
                                           "--dry-run"], 1, "x_20260101_000000.tar.gz"),
    Case("prune-time-zone", ["prune", "{w}/prune", "--keep-last", "1", "--time-zone",
                             "Nowhere/Zone", "--dry-run"], 2, "Nowhere/Zone"),
    Case("prune-keep-text", ["prune", "{w}/prune", "--keep-last", "all"], 2, "--keep-last"),
    Case("prune-skips-created-int", ["prune", "{w}/prune", "--keep-last", "5", "--dry-run"], 1,
         "x_20260101_000000.tar.gz"),
    # migrate
    Case("migrate-missing-plan", ["migrate", "{w}/nosuch.toml", "lmdb:{w}/store",
                                  "lmdb:{w}/m1"], 2, "{w}/nosuch.toml"),
    Case("migrate-plan-is-dir", ["migrate", "{w}/emptydir", "lmdb:{w}/store", "lmdb:{w}/m2"],
         2, "{w}/emptydir"),
    Case("migrate-garbage-plan", ["migrate", "{w}/plan.toml", "lmdb:{w}/store", "lmdb:{w}/m3"],
         2, "{w}/plan.toml"),
    Case("migrate-timeout-nan", ["migrate", "kubo-11-to-12", "lmdb:{w}/store", "lmdb:{w}/m5",
                                 "--timeout", "nan"], 2, "timeout must be"),
    Case("migrate-batch-huge", ["migrate", "kubo-11-to-12", "lmdb:{w}/store", "lmdb:{w}/m6",
                                "--batch-size", "99999999999999999999"], 2, "batch_size must be"),
    Case("migrate-batch-text", ["migrate", "{w}/plan.toml", "lmdb:{w}/store", "lmdb:{w}/m4",
                                "--batch-size", "big"], 2, "--batch-size"),
    # schedule
    Case("schedule-missing-config", ["schedule", "list", "--config", "{w}/nosuch.toml"], 2,
         "{w}/nosuch.toml"),
    Case("schedule-config-is-dir", ["schedule", "list", "--config", "{w}/emptydir"], 2,
         "{w}/emptydir"),
    Case("schedule-bad-toml", ["schedule", "list", "--config", "{w}/bad.toml"], 2,
         "{w}/bad.toml"),
    Case("schedule-no-action", ["schedule"], 2, "ACTION"),
    Case("schedule-run-once-unknown", ["schedule", "run-once", "nosuch", "--config",
                                       "{w}/sched.toml"], 2, "nosuch"),
    Case("schedule-metrics-port-range", ["schedule", "run", "--config", "{w}/sched.toml",
                                         "--metrics-port", "70000"], 2, "--metrics-port"),
    Case("schedule-metrics-textfile-fifo", ["schedule", "run", "--config", "{w}/sched.toml",
                                            "--metrics-textfile", "{w}/fifo.tar.gz"], 2,
         "{w}/fifo.tar.gz: not a regular file"),
    Case("schedule-metrics-port-busy", ["schedule", "run", "--config", "{w}/sched.toml",
                                        "--metrics-port", "{busy}"], 2, "metrics port {busy}"),
    # tune
    Case("tune-missing-source", ["tune", "{w}/nosuch"], 2, "{w}/nosuch"),
    Case("tune-plot-dir-missing", ["tune", "lmdb:{w}/store", "--plot", "{w}/nodir/p.png"], 2,
         "{w}/nodir"),
    Case("tune-plot-suffix", ["tune", "lmdb:{w}/store", "--plot", "{w}/plot.txt"], 2,
         "{w}/plot.txt"),
    Case("tune-levels-text", ["tune", "lmdb:{w}/store", "--levels", "fast"], 2, "--levels"),
    Case("tune-max-bytes-text", ["tune", "lmdb:{w}/store", "--max-bytes", "lots"], 2,
         "--max-bytes"),
    Case("tune-levels-backwards", ["tune", "lmdb:{w}/store", "--levels", "5-1"], 2, "--levels"),
    Case("tune-levels-empty", ["tune", "lmdb:{w}/store", "--levels", ","], 2, "--levels"),
    Case("tune-chunk-targets-zero", ["tune", "lmdb:{w}/store", "--chunk-targets", "0"], 2,
         "--chunk-targets"),
    Case("tune-sample-nan", ["tune", "lmdb:{w}/store", "--sample-mb", "nan"], 2, "--sample-mb"),
    Case("tune-max-seconds-negative", ["tune", "lmdb:{w}/store", "--max-seconds=-1"], 2,
         "--max-seconds"),
    Case("tune-max-bytes-inf", ["tune", "lmdb:{w}/store", "--max-bytes", "infG"], 2,
         "--max-bytes"),
    Case("tune-reps-zero", ["tune", "lmdb:{w}/store", "--reps", "0"], 2, "--reps"),
    Case("tune-goal", ["tune", "lmdb:{w}/store", "--goal", "fastest"], 2, "--goal"),
]


def test_the_table_is_large_enough():
    assert len(CASES) >= 60
    commands = {c.argv[0] for c in CASES if c.argv}
    assert {"backup", "restore", "verify", "inspect", "ls", "consolidate", "prune", "migrate",
            "schedule", "tune"} <= commands


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, workspace, cli_env):
    if case.needs and case.needs not in workspace["mounts"]:
        pytest.skip(f"needs a {case.needs} tmpfs mount (root and mount(8)); none could be made")
    w = str(workspace["w"])

    def fill(s: str) -> str:
        return s.replace("{w}", w).replace("{busy}", str(workspace["busy_port"]))

    argv = [fill(a) for a in case.argv]
    r = subprocess.run([sys.executable, "-m", "dsbackup", *argv], env=cli_env,
                       capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == case.code, f"exit {r.returncode}\n{r.stderr}"
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    names = fill(case.names)
    hits = [ln for ln in lines if names in ln]
    assert hits, f"no line names {names!r}:\n{r.stderr}"
    if case.code == 2 and not case.report:
        # one line says what is wrong (argparse's usage line aside), and it is the last one
        errors = [ln for ln in lines if "error" in ln]
        assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    for d in (Path(w), Path(w) / "full"):  # nothing partial left behind
        with contextlib.suppress(FileNotFoundError):
            assert not [p.name for p in d.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_overwrite_never_replaces_a_device_or_pipe(tmp_path, cli_env, kind):
    # `backup SRC /dev/null --overwrite` as root replaced /dev/null with an archive file
    import stat

    target = tmp_path / "null"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    datasets.write_lmdb(str(tmp_path / "src"), iter([(b"/a", b"1")]))
    for argv in (["backup", f"lmdb:{tmp_path / 'src'}", str(target), "--overwrite"],
                 ["backup", f"lmdb:{tmp_path / 'src'}", str(target), "--overwrite", "--format",
                  "go"]):
        r = subprocess.run([sys.executable, "-m", "dsbackup", *argv], env=cli_env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "not replacing it, even with --overwrite" in r.stderr
        mode = os.lstat(target).st_mode
        assert stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISCHR(mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null", "src"]


def test_a_key_the_target_cannot_hold_leaves_no_journal_behind(workspace, cli_env):
    # the journal of a restore that failed on such a key blocked every later restore into
    # the target ("an unfinished restore of another archive"); resuming could never succeed
    w = workspace["w"]
    target = w / "keyfail"

    def restore(archive: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dsbackup", "restore", str(w / archive),
                               f"flatfs:{target}"], env=cli_env, capture_output=True,
                              text=True, timeout=120)

    r = restore("good.tar.gz")  # /blocks/K0000: not a flatfs key
    assert r.returncode == 2 and "is not valid for flatfs" in r.stderr, r.stderr
    assert not (w / "keyfail.dsbackup-restore.json").exists()
    r = restore("upper.tar.gz")
    assert r.returncode == 0, r.stderr


def test_a_restore_refused_for_space_leaves_no_journal_in_an_empty_target(workspace, cli_env,
                                                                         tmp_path):
    # the first batch did not fit: nothing was written, but the journal stayed and refused
    # any other archive into the (empty) target as "an unfinished restore of another archive"
    full = tmp_path / "full"
    if not _mount(full, "size=128k"):
        pytest.skip("needs a tmpfs mount (root and mount(8)); none could be made")
    small = tmp_path / "small"
    datasets.write_lmdb(str(small), iter([(b"/K0", b"small")]))
    BackupManager(BackupConfig(workers=1)).create_backup(f"lmdb:{small}", tmp_path / "s.tar.gz")

    def restore(archive: Path, target: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dsbackup", "restore", str(archive),
                               target], env=cli_env, capture_output=True, text=True,
                              timeout=120)

    try:
        r = restore(workspace["w"] / "upper.tar.gz", f"flatfs:{full / 't'}")
        assert r.returncode == 2 and "no space left on" in r.stderr, r.stderr
        assert os.listdir(full) == []  # as it was: no store (the one it made), no journal
        r = restore(tmp_path / "s.tar.gz", f"flatfs:{full / 't'}")
        assert r.returncode == 0, r.stderr
    finally:
        subprocess.run(["umount", "-l", str(full)], capture_output=True)


def test_an_empty_glob_is_one_error_line_and_touches_nothing(workspace, cli_env):
    # restore --pattern '' restored nothing into a new store and said exit 1; both it and
    # backup --exclude '' first warned "can match no key ... (did you mean '/'?)"
    w = workspace["w"]
    for argv in (["restore", str(w / "good.tar.gz"), f"lmdb:{w / 'r15'}", "--pattern", ""],
                 ["restore", str(w / "go.tar.gz"), f"lmdb:{w / 'r15'}", "--pattern", "/a",
                  "--pattern", ""],
                 ["backup", f"lmdb:{w / 'store'}", str(w / "o18.tar.gz"), "--exclude", ""]):
        r = subprocess.run([sys.executable, "-m", "dsbackup", *argv], env=cli_env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (w / "r15").exists() and not (w / "o18.tar.gz").exists()
