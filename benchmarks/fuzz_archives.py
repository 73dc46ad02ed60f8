"""Structure-aware mutation fuzzer of every archive reader (not part of the test suite).

Takes small valid archives of each kind (the golden archives of tests/fixtures/golden and fresh
ones: paged index, zstd, encrypted paged zstd, their incrementals), mutates them — raw bit
flips, truncations and field sets, and structural lies re-encoded with every checksum right
(benchmarks/fuzzlib) — and runs each reader on the result in a forked child (the CLI's
`main`, imported once) with a time and memory limit:

    inspect, ls, ls -l --prefix, verify --quick, verify (deep), restore into lmdb:, flatfs:
    (flatfs archives), kubo: (node archives), restore --prefix, consolidate (incrementals),
    backup --parent (an incremental on a hostile parent); encrypted archives with their key.

A case is a finding when a reader crashes (a signal), hangs (over --timeout), grows past
--max-rss-mb, prints a traceback or "internal error", exits with a code not in EXIT_CODES.md,
fails with an exception that is not the package's own (OSError/ValueError from hostile bytes),
writes outside its target or changes an archive it reads, or says OK for content that is not
the original archive's (a raw mutation that verifies deep, or a restore that succeeds with
other records). Usage:

    PYTHONPATH=src python benchmarks/fuzz_archives.py --cases 500 --seed 1 [--work DIR]
        [--json benchmarks/results/fuzz_archives.json] [--only SEED_NAME] [--keep]

Findings go to WORK/findings/ (the archive, its parents, the command, stdout and stderr).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))

from fuzzlib import model  # noqa: E402
from fuzzlib.mutate import Mutator, init_bombs  # noqa: E402

GOLDEN = ROOT / "tests" / "fixtures" / "golden"
RAW_KEY_HEX = "5a" * 32  # tests/support/golden.py RAW_KEY
PARENTS = {"incr.tar.gz": "full.tar.gz", "incr-object.tar.gz": "full.tar.gz",
           "incr-catalog.tar.gz": "full-catalog.tar.gz", "enc-incr.tar.gz": "enc-full.tar.gz",
           "flatfs-incr.tar.gz": "flatfs-full.tar.gz", "paged-incr.tar.gz": "paged.tar.gz",
           "zstd-incr.tar.gz": "zstd.tar.gz", "encp-incr.tar.gz": "encp.tar.gz"}
EXIT_OK = {0, 1, 2, 3, 4}


@dataclass
class Seed:
    name: str
    data: bytes
    truth: dict[bytes, int] | None = None  # key -> xxh3 of value
    encrypted: bool = False
    node: bool = False
    flatfs: bool = False
    go: bool = False
    paged: bool = False

    @property
    def chain(self) -> list[str]:
        out, n = [], self.name
        while n in PARENTS:
            n = PARENTS[n]
            out.append(n)
        return out


@dataclass
class Result:
    reader: str
    rc: int | None
    signal: int | None
    timed_out: bool
    seconds: float
    maxrss_mb: float
    stdout: str
    stderr: str
    exc: str | None  # a non-package exception's type and traceback


@dataclass
class Stats:
    runs: collections.Counter = field(default_factory=collections.Counter)
    rcs: dict[str, collections.Counter] = field(default_factory=lambda: collections.defaultdict(
        collections.Counter))
    findings: collections.Counter = field(default_factory=collections.Counter)
    mutations: collections.Counter = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)


# -- seeds --------------------------------------------------------------------------------------


def _cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> None:
    e = dict(os.environ, PYTHONPATH=str(ROOT / "src"), DSBACKUP_TEST_PAGE_ENTRIES="256",
             **(env or {}))
    r = subprocess.run([sys.executable, "-m", "dsbackup", *args], env=e, cwd=cwd,
                       capture_output=True, text=True, timeout=600)
    if r.returncode not in (0, 1):
        raise SystemExit(f"seed command failed: {args}: {r.stderr}")


def build_seeds(work: Path) -> tuple[dict[str, Seed], Path, Path]:
    from dsbackup import datasets
    from dsbackup.datastores import open_datastore

    sd = work / "seeds"
    key = work / "key.hex"
    src = work / "src-lmdb"
    if not (sd / ".done").exists():
        shutil.rmtree(sd, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
        sd.mkdir(parents=True)
        key.write_text(RAW_KEY_HEX + "\n")
        key.chmod(0o600)
        (work / "pass.txt").write_text("fuzz passphrase")
        (work / "pass.txt").chmod(0o600)
        for p in GOLDEN.glob("*.tar.gz"):
            shutil.copy(p, sd / p.name)
        recs = dict(datasets.iter_small(520, seed=5))  # 560 chunks of 1: 3 index pages
        recs.update(datasets.iter_blocks(40, seed=6, block_size=700))
        ds = open_datastore(f"lmdb:{src}")
        ds.put_many(sorted(recs), [recs[k] for k in sorted(recs)])
        ds.close()
        s = f"lmdb:{src}"
        common = ["--workers", "1", "--no-verify"]
        _cli("backup", s, str(sd / "paged.tar.gz"), "--paged-index", "always", "--chunk-size",
             "1", "--include-metadata", *common)
        _cli("backup", s, str(sd / "zstd.tar.gz"), "--codec", "zstd", "--chunk-size", "16",
             *common)
        _cli("backup", s, str(sd / "encp.tar.gz"), "--encrypt", "--key-file", str(key),
             "--codec", "zstd", "--paged-index", "always", "--chunk-size", "1", *common)
        ds = open_datastore(f"lmdb:{src}")
        ks = sorted(recs)
        for k in ks[::37]:
            ds.put(k, b"changed " + k)
        ds.put(b"/zz/new", b"new value")
        ds.close()
        _cli("backup", s, str(sd / "paged-incr.tar.gz"), "--parent", str(sd / "paged.tar.gz"),
             "--chunk-size", "1", "--include-metadata", *common)
        _cli("backup", s, str(sd / "zstd-incr.tar.gz"), "--parent", str(sd / "zstd.tar.gz"),
             "--codec", "zstd", "--chunk-size", "16", *common)
        _cli("backup", s, str(sd / "encp-incr.tar.gz"), "--parent", str(sd / "encp.tar.gz"),
             "--encrypt", "--key-file", str(key), "--codec", "zstd", "--chunk-size", "1",
             *common)
        (sd / ".done").touch()
    seeds = {}
    for p in sorted(sd.glob("*.tar.gz")):
        n = p.name
        seeds[n] = Seed(n, p.read_bytes(), encrypted=n.startswith("enc"),
                        node=n == "kubo.tar.gz", flatfs=n.startswith("flatfs"),
                        go=n == "go.tar.gz", paged=n.startswith(("paged", "encp")))
    for s in seeds.values():
        s.truth = truth_of(s, sd, key, work)
    return seeds, key, src


def read_lmdb(path: Path) -> dict[bytes, int]:
    from dsbackup._ext.checksum import xxh3_64
    from dsbackup.datastores import open_datastore

    ds = open_datastore(f"lmdb:{path}", readonly=True)
    try:
        return {k: xxh3_64(v) for ks, vs in ds.scan_batches() for k, v in zip(ks, vs)}
    finally:
        ds.close()


def truth_of(seed: Seed, sd: Path, key: Path, work: Path) -> dict[bytes, int]:
    t = work / "truth" / seed.name
    if not (t / ".done").exists():
        shutil.rmtree(t, ignore_errors=True)
        t.parent.mkdir(exist_ok=True)
        k = ["--key-file", str(key)] if seed.encrypted else []  # (a plain one is refused)
        _cli("restore", str(sd / seed.name), f"lmdb:{t}", *k, "--workers", "1")
        (t / ".done").touch()
    return read_lmdb(t)


# -- running one reader -------------------------------------------------------------------------


def prewarm() -> None:
    """Import what the readers use, once, in the parent: children are forked from it."""
    import dsbackup.archive.consolidate  # noqa: F401
    import dsbackup.archive.reader  # noqa: F401
    import dsbackup.archive.verify  # noqa: F401
    import dsbackup.cli.main as cm
    import dsbackup.engine.restore  # noqa: F401
    for mod in cm._command_modules():
        del mod


def run_reader(reader: str, argv: list[str], cwd: Path, timeout: float, max_mb: int
               ) -> Result:
    out, err, exc = cwd / ".stdout", cwd / ".stderr", cwd / ".exc"
    for f in (out, err, exc):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: the CLI's main on argv, stdio to files, limits set
        try:
            os.setpgid(0, 0)
            os.chdir(cwd)
            fd = os.open(os.devnull, os.O_RDONLY)
            os.dup2(fd, 0)
            o = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            e = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(o, 1)
            os.dup2(e, 2)
            resource.setrlimit(resource.RLIMIT_DATA, (max_mb << 20, max_mb << 20))
            os.environ.update(DSBACKUP_ZYGOTE="0", DSBACKUP_PRESTART="0",
                              DSBACKUP_TEST_PAGE_ENTRIES="256")
            import traceback

            import dsbackup.cli.main as cm
            from dsbackup.errors import DsBackupError
            real = cm.describe_error

            def describe(e: BaseException, args):
                if not isinstance(e, DsBackupError):
                    with open(exc, "w") as f:
                        f.write(f"{type(e).__name__}: {e}\n")
                        traceback.print_exception(e, file=f)
                return real(e, args)

            cm.describe_error = describe
            rc = cm.main(argv)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc if isinstance(rc, int) else 99)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
        except BaseException as e:  # noqa: BLE001
            with contextlib.suppress(Exception):
                import traceback
                with open(exc, "a") as f:
                    f.write(f"UNCAUGHT {type(e).__name__}: {e}\n")
                    traceback.print_exception(e, file=f)
            os._exit(98)
    timed_out = False
    while True:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() - t0 > timeout:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            wpid, status, ru = os.wait4(pid, 0)
            break
        time.sleep(0.005)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # workers it left
    secs = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    sig = -rc if rc < 0 else None

    def rd(p: Path) -> str:
        try:
            return p.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    return Result(reader, None if sig else rc, sig, timed_out, secs, ru.ru_maxrss / 1024,
                  rd(out), rd(err), rd(exc) or None)


# -- one case -----------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, str]:
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = Path(dp) / n
            rel = str(p.relative_to(root))
            if rel.startswith("out/") or rel.startswith(".") or "/." in rel and rel.startswith(
                    "out"):
                continue
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue
            if p.is_file() and not p.is_symlink():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = f"mode {st.st_mode:o}"
    return out


def classify(r: Result, max_mb: int) -> list[str]:
    f = []
    if r.timed_out:
        f.append("hang")
    elif r.signal:
        f.append(f"signal{r.signal}")
    elif r.rc not in EXIT_OK:
        f.append(f"exit{r.rc}")
    if "Traceback" in r.stderr or "internal error" in r.stderr:
        f.append("internal")
    if r.exc:
        first = r.exc.split(":", 1)[0]
        if "MemoryError" not in first:
            f.append(f"foreign-{first}")
        elif "not enough memory" not in r.stderr:
            f.append("memory")
    if r.maxrss_mb > max_mb * 0.8 and "memory" not in f:
        f.append("memory")
    if r.rc in (2, 3, 4) and r.stderr.count("dsbackup: error:") + r.stderr.count(
            "error: argument") + (r.stdout + r.stderr).count("DAMAGED") + (r.stdout + r.stderr).count(
            "not checked,") == 0:
        f.append("no-error-line")
    return f


def case(seeds: dict[str, Seed], seed: Seed, rng: random.Random, work: Path, key: Path,
         src: Path, stats: Stats, args) -> None:
    box = work / "box"
    shutil.rmtree(box, ignore_errors=True)
    (box / "out").mkdir(parents=True)
    chain = seed.chain
    # which archive is hostile: the seed itself, or (an incremental) one of its parents
    victim = seed.name if not chain or rng.random() < 0.8 else rng.choice(chain)
    vs = seeds[victim]
    data, kind = mutate(vs, rng, victim)
    kind = ("parent:" if victim != seed.name else "") + kind
    stats.mutations[".".join(kind.split("+")[0].split(".")[:2])] += 1
    for n in [seed.name, *chain]:
        (box / n).write_bytes(data if n == victim else seeds[n].data)
    A = seed.name
    k = ["--key-file", str(key)] if seed.encrypted else []
    truth = seed.truth or {}
    keys = sorted(truth)
    prefix = "/"
    if keys:
        kk = rng.choice(keys).decode(errors="replace")
        prefix = rng.choice(["/" + kk.split("/")[1], kk, kk[:len(kk) // 2] or "/"])
    w = ["--workers", rng.choice(["1", "1", "2"])]
    readers = [("inspect", ["inspect", A, *k]), ("ls", ["ls", A, *k]),
               ("ls-prefix", ["ls", "-l", "--prefix", prefix, A, *k]),
               ("verify-quick", ["verify", "--quick", A, *k]),
               ("verify", ["verify", A, *k, *w]),
               ("restore-lmdb", ["restore", A, "lmdb:out/l", *k, *w])]
    if seed.encrypted:
        readers += [("inspect-nokey", ["inspect", A]),
                    ("verify-quick-nokey", ["verify", "--quick", A])]
        if rng.random() < 0.3:
            readers.append(("verify-passphrase", ["verify", A, "--passphrase-file",
                                                  str(key.parent / "pass.txt")]))
    if seed.flatfs:
        readers.append(("restore-flatfs", ["restore", A, "flatfs:out/f", *k, *w]))
    if seed.node:
        readers.append(("restore-kubo", ["restore", A, "kubo:out/k/repo", *k, *w]))
        # a target whose entries are symlinks out of it: nothing may be written through them
        (box / "victim").mkdir()
        (box / "victim" / "file").write_text("victim\n")
        repo = box / "out" / "ks" / "repo"
        repo.mkdir(parents=True)
        for n, target in (("config", "../../../victim/file"), ("keystore", "../../../victim"),
                          ("version", "/etc/hostname"), ("datastore", "../../../victim")):
            (repo / n).symlink_to(target)
        readers.append(("restore-kubo-symlinks", ["restore", A, "kubo:out/ks/repo",
                                                  "--overwrite", *k, *w]))
    if rng.random() < 0.4:  # keys become file paths
        readers.append(("restore-fsds", ["restore", A, "fsds:out/fs", *k, *w]))
    if seed.paged or rng.random() < 0.3:
        readers.append(("restore-prefix", ["restore", "--prefix", prefix, A, "lmdb:out/lp",
                                           *k, *w]))
    if chain:
        readers.append(("consolidate", ["consolidate", A, "out/c.tar.gz", *k, *w]))
    if not seed.go and not seed.node and rng.random() < args.backup_rate:
        enc = ["--encrypt", *k] if seed.encrypted else []
        readers.append(("backup-parent", ["backup", f"lmdb:{src}", "out/b.tar.gz", "--parent",
                                          A, "--workers", "1", *enc]))
    before = tree(box)
    results = {}
    for name, argv in readers:
        r = run_reader(name, argv, box, args.timeout, args.max_rss_mb)
        results[name] = r
        stats.runs[name] += 1
        stats.rcs[name][str(r.rc if r.rc is not None else f"sig{r.signal}")] += 1
        for f in classify(r, args.max_rss_mb):
            if f == "memory" and kind == "go.bomb" and "not enough memory" in r.stderr:
                f = "note:memory"  # a Go member is parsed whole, up to 1 GiB (GOFORMAT.md)
            report(stats, work, f"{name}:{f}", kind, argv, r, box, seed)
    # oracles across readers
    raw = not any(kind.startswith(p) for p in ("payload", "table", "keys", "catalog", "json",
                                                 "node", "tar", "member", "parent:"))
    v = results["verify"]
    rl = results["restore-lmdb"]
    restored = None
    if rl.rc in (0, 1) and (box / "out" / "l").exists():
        try:
            restored = read_lmdb(box / "out" / "l")
        except Exception as e:  # noqa: BLE001
            restored = {b"<unreadable>": 0}
            rl.stderr += f"\nreading the restored store: {e}"
    same = restored == truth
    # no mutation here rewrites the summary's totals and fingerprint to match a change of
    # content, so a deep verify that passes must mean the records are the original ones
    if v.rc == 0 and rl.rc == 0 and not same:
        report(stats, work, "verify-ok-wrong-content", kind, ["verify", A], v, box, seed)
    if rl.rc == 0 and not same and v.rc != 0:
        # a raw mutation must fail a checksum; a re-sealed lie (index and payload agreeing,
        # only the summary's totals left) is only seen by verify: noted, not a finding
        report(stats, work, "restore-ok-verify-fails" if raw else
               "note:restore-ok-verify-fails-resealed", kind, ["restore", A], rl, box, seed)
    if v.rc == 0 and rl.rc not in (0, None) and not rl.timed_out:
        report(stats, work, "verify-ok-restore-fails", kind, ["restore", A], rl, box, seed)
    ls = results["ls"]
    if ls.rc == 0 and v.rc == 0:
        listed = [x.split(None, 1)[-1] if x.startswith(" ") else x
                  for x in ls.stdout.splitlines() if x.startswith("/")]
        if listed and len(listed) != len(truth):
            report(stats, work, "verify-ok-ls-differs", kind, ["ls", A], ls, box, seed)
    after = tree(box)
    for p, h in after.items():
        if p.startswith("out"):
            continue
        if before.get(p) != h:
            what = "modified" if p in before else "escaped"
            report(stats, work, f"{what}:{p}", kind, ["*"], rl, box, seed)
    for p in before:
        if p not in after:
            report(stats, work, f"deleted:{p}", kind, ["*"], rl, box, seed)
    for name, out in (("consolidate", box / "out" / "c.tar.gz"),
                      ("backup-parent", box / "out" / "b.tar.gz")):
        r = results.get(name)
        if r is not None and r.rc in (0, 1) and out.exists():
            chk = run_reader(name + "-check", ["verify", str(out.relative_to(box)), *k,
                                               "--parent-dir", "."], box, args.timeout,
                             args.max_rss_mb)
            stats.runs[name + "-check"] += 1
            if chk.rc != 0:
                report(stats, work, f"{name}-wrote-bad-archive", kind, chk_argv(chk), chk,
                       box, seed)
            if name == "consolidate" and chk.rc == 0 and raw and v.rc != 0:
                report(stats, work, "consolidate-ok-verify-fails", kind, ["consolidate"], r,
                       box, seed)


def chk_argv(r: Result) -> list[str]:
    return [r.reader]


def mutate(s: Seed, rng: random.Random, name: str) -> tuple[bytes, str]:
    mut = Mutator(rng, s.data, len(s.data))
    mut.name = name
    if s.go and rng.random() < 0.7:
        from fuzzlib.mutate import go_mutate
        return go_mutate(rng, s.data)
    if s.go or rng.random() < 0.25:
        try:
            return mut.raw()
        except Exception:  # noqa: BLE001 - the Go format has no dsbackup trailer
            b = bytearray(s.data)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            return bytes(b), "raw.flip1"
    try:
        a = model.parse(s.data, bytes.fromhex(RAW_KEY_HEX) if s.encrypted else None)
    except Exception:  # noqa: BLE001
        return mut.raw()
    if s.encrypted and rng.random() < 0.2:
        kind = mut.members(a)
        return model.serialize(a, fix=rng.random() < 0.7), kind
    ops = [mut.table, mut.table, mut.keys, mut.payload, mut.payload, mut.catalog,
           mut.json_member, mut.tar, mut.members]
    if s.encrypted:
        ops += [mut.key_header] * 3
    if s.node:
        ops += [mut.node] * 4
    kinds = []
    for _ in range(1 if rng.random() < 0.8 else 2):
        op = rng.choice(ops)
        try:
            kinds.append(op(a))
        except Exception as e:  # noqa: BLE001 - a second mutation of what the first broke
            kinds.append(f"{op.__name__}.skipped({type(e).__name__})")
    data = model.serialize(a, fix=True)
    data = data.replace(b'"SELF"', json.dumps(name).encode()) if b'"SELF"' in data else data
    return data, "+".join(kinds)


def report(stats: Stats, work: Path, what: str, kind: str, argv: list[str], r: Result,
           box: Path, seed: Seed) -> None:
    stats.findings[what] += 1
    if stats.findings[what] > 3:
        return
    d = work / "findings" / f"{what.replace('/', '_').replace(':', '-')}-{stats.findings[what]}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for n in [seed.name, *seed.chain]:
        if (box / n).exists():
            shutil.copy(box / n, d / n)
    (d / "case.txt").write_text(
        f"seed {seed.name}\nmutation {kind}\nreader {r.reader}\nargv {argv}\nrc {r.rc} "
        f"signal {r.signal} timed_out {r.timed_out} secs {r.seconds:.2f} "
        f"maxrss {r.maxrss_mb:.0f} MB\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n"
        f"{r.stderr[-3000:]}\n--- exception\n{r.exc}\n")
    stats.examples.setdefault(what, f"{seed.name} {kind} {r.reader}: "
                                    f"{(r.exc or r.stderr).strip()[:300]}")
    print(f"FINDING {what}: {seed.name} {kind} {r.reader} rc={r.rc} "
          f"{(r.exc or r.stderr).strip().splitlines()[:1]}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: no)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/dsbackup-fuzz"))
    ap.add_argument("--only", action="append", help="seed archive names to use")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--max-rss-mb", type=int, default=1536)
    ap.add_argument("--backup-rate", type=float, default=0.25)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    import fcntl

    lock = open(args.work / ".lock", "w")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"{args.work}: another fuzz_archives.py run uses it") from None
    seeds, key, src = build_seeds(args.work)
    init_bombs()
    prewarm()
    names = args.only or sorted(seeds)
    rng = random.Random(args.seed)
    stats = Stats()
    t0 = time.monotonic()
    n = 0

    def summary() -> dict:
        return {"cases": n, "seed": args.seed, "seconds": round(time.monotonic() - t0, 1),
                "seeds": names, "runs_per_reader": dict(stats.runs),
                "exit_codes": {k: dict(v) for k, v in stats.rcs.items()},
                "mutations": dict(stats.mutations.most_common()),
                "findings": dict(stats.findings), "examples": stats.examples,
                "load_average": os.getloadavg()}

    for n in range(1, args.cases + 1):
        seed = seeds[rng.choice(names)]
        case(seeds, seed, random.Random(rng.random()), args.work, key, src, stats, args)
        if n % 25 == 0:
            print(f"{n} cases, {sum(stats.runs.values())} runs, {time.monotonic() - t0:.0f} s,"
                  f" findings {dict(stats.findings)}", flush=True)
            if args.json:  # so far (a run stopped early still leaves its counts)
                args.json.write_text(json.dumps(summary(), indent=1) + "\n")
        if args.seconds and time.monotonic() - t0 > args.seconds:
            break
    out = summary()
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    real = [f for f in stats.findings if not f.startswith("note:")]
    return 1 if real else 0


if __name__ == "__main__":
    raise SystemExit(main())
