"""Milestones of one CLI command from its exec, under several trees, interleaved (start-up).

Usage: python benchmarks/backup_timeline.py ROUNDS TREE[,TREE ...] ARGS ...
e.g.   AB_CHRT=10 python benchmarks/backup_timeline.py 11 /tmp/before,. backup lmdb:STORE a.tar.gz
Every round runs the command as pip's `dsbackup` console script does (from
dsbackup.cli._entry import run) with each TREE's src/ on PYTHONPATH (byte-compiled first;
PYTHONDONTWRITEBYTECODE unset), in an order reversed every other round; an audit hook in the
command marks, in ms from just before its exec: the first import of the CLI's entry, the
first fork (the workers' zygote), the first and last chunk a parallel scan hands the writer,
the check before the rename (its start), the zygote's stop, the exit handlers; and the end
of the process as its parent sees it, with the CPU (user + system) of the process tree from
os.wait4. The hook adds ~0.1-0.3 ms per import. ARGS ending in lmdb:DIR has DIR removed
before each run, a backup its archive (the last argument). ``AB_CHRT=10``: under
``chrt -f 10`` (SCHED_FIFO, root). Prints medians (and minima) and the median of the
per-round ratios to the first tree.
"""

from __future__ import annotations

import os
import sys
import time

# the command's own process imports nothing else before it runs (child): no module of the
# measured start-up is loaded early

PY = sys.executable
ENV0 = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
KEYS = ["entry imported", "zygote forked", "first chunk", "last chunk", "check start",
        "zygote stop", "exit handlers", "process end", "CPU"]


def child() -> None:
    """The command, with the audit hook: writes 'ms milestone' lines to $TL_OUT at exit."""
    import atexit  # (a builtin module)

    t0, main, marks = float(os.environ["TL_T0"]), os.getpid(), {}
    last = [0.0]

    def mark(name: str) -> None:
        marks.setdefault(name, (time.monotonic() - t0) * 1000)

    def wrap(obj: object, attr: str, before: str, every: str | None = None) -> None:
        f = getattr(obj, attr)
        if getattr(f, "_timeline", False):
            return

        def w(*a: object, **k: object) -> object:
            mark(before)
            if every:
                last[0] = (time.monotonic() - t0) * 1000
            return f(*a, **k)
        w._timeline = True  # type: ignore[attr-defined]
        setattr(obj, attr, w)

    def hook(event: str, args: tuple) -> None:
        if os.getpid() != main:
            return
        if event == "os.fork":
            mark("zygote forked")
        m = sys.modules.get("dsbackup.pipeline.parallel")
        if m is not None and hasattr(m, "ParallelScan"):
            wrap(m.ParallelScan, "_ready_chunk", "first chunk", every="last chunk")
        m = sys.modules.get("dsbackup.engine.backup")
        if m is not None and hasattr(m, "_quick_check"):
            wrap(m, "_quick_check", "check start")
        m = sys.modules.get("dsbackup.pipeline.zygote")
        if m is not None and hasattr(m, "stop"):
            wrap(m, "stop", "zygote stop")

    def dump() -> None:
        if os.getpid() != main:
            return
        mark("exit handlers")
        if last[0]:
            marks["last chunk"] = last[0]
        with open(os.environ["TL_OUT"], "w") as f:
            f.writelines(f"{v:.3f} {k}\n" for k, v in marks.items())

    sys.addaudithook(hook)
    atexit.register(dump)
    sys.argv = ["dsbackup", *sys.argv[2:]]
    from dsbackup.cli._entry import run

    mark("entry imported")
    raise SystemExit(run())


def main(argv: list[str]) -> None:
    import collections
    import shutil
    import statistics
    import subprocess

    rounds, trees, args = int(argv[0]), argv[1].split(","), argv[2:]
    pre = ["chrt", "-f", os.environ["AB_CHRT"]] if os.environ.get("AB_CHRT") else []
    work = os.environ.get("TMPDIR", "/tmp")
    out = os.path.join(work, f"timeline-{os.getpid()}.txt")
    for t in trees:
        subprocess.run([PY, "-m", "compileall", "-q", f"{t}/src/dsbackup"], check=True,
                       env=ENV0)
    res: dict = {t: collections.defaultdict(list) for t in trees}
    load0 = os.getloadavg()
    for r in range(rounds):
        for t in trees if r % 2 == 0 else trees[::-1]:
            if args[-1].startswith("lmdb:"):
                shutil.rmtree(args[-1][5:], ignore_errors=True)
            elif "backup" in args and os.path.exists(args[-1]):
                os.unlink(args[-1])
            env = dict(ENV0, PYTHONPATH=f"{t}/src", TL_OUT=out)
            t0 = time.monotonic()
            env["TL_T0"] = repr(t0)
            p = subprocess.Popen([*pre, PY, __file__, "--child", *args], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, ru = os.wait4(p.pid, 0)
            end = (time.monotonic() - t0) * 1000
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"{t}: {args}: exit {os.waitstatus_to_exitcode(status)}")
            with open(out) as f:
                for line in f:
                    ms, name = line.rstrip("\n").split(" ", 1)
                    res[t][name].append(float(ms))
            res[t]["process end"].append(end)
            res[t]["CPU"].append(1000 * (ru.ru_utime + ru.ru_stime))
    os.unlink(out)
    print(f"load average {load0} -> {os.getloadavg()}; {rounds} rounds; dsbackup "
          f"{' '.join(args)}{' under chrt -f ' + os.environ['AB_CHRT'] if pre else ''}")
    print(f"{'ms from exec (median, min)':28}" + "".join(f"{t[-22:]:>24}" for t in trees)
          + "   per-round ratio, lower")
    for k in KEYS:
        if not all(len(res[t][k]) == rounds for t in trees):
            continue
        row = f"{k:28}" + "".join(f"{statistics.median(res[t][k]):15.1f} ({min(res[t][k]):5.0f})"
                                  for t in trees)
        for t in trees[1:]:
            rs = [b / a for a, b in zip(res[trees[0]][k], res[t][k])]
            row += f"   {statistics.median(rs):.3f}, {sum(x < 1 for x in rs)}/{rounds}"
        print(row)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child()
    else:
        main(sys.argv[1:])
