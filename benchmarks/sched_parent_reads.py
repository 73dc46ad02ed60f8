"""A scheduled incremental of an unchanged LMDB store (scheduler/job.py run_job, the quick
verify of the parent before it included), A/B in one run: ``auto`` (the backup trusts the
parent the quick verify just read) against ``trust_parent = false`` in the schedule's settings
(the backup's check reads the referenced parent members again). Interleaved rounds, medians
of wall and CPU seconds, and the parent's member bytes hashed per run (counted where the
archive reader hashes them). verify_after_backup is off (it adds one read of the referenced
members to both).

Usage: python benchmarks/sched_parent_reads.py [ROUNDS] [DIR]
Set COLD=1 to evict the parent from the page cache (posix_fadvise DONTNEED) before each run.
Set VERIFY=1 to run with verify_after_backup on, and a third mode ``reread``: a runner whose
verify does not take ``trusted_chain`` (so the verify after the backup reads the referenced
parent members again, as before that keyword) beside ``auto``, where it does not.
Size: 6,000 blocks of 16 KiB (content keys: values not read), a ~98 MB parent.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from dsbackup import datasets
from dsbackup.archive.reader import ArchiveReader
from dsbackup.scheduler import ScheduledBackup
from dsbackup.scheduler.clock import ManualClock
from dsbackup.scheduler.job import run_job
from dsbackup.scheduler.retention import RetentionPolicy
from dsbackup.scheduler.runner import ManagerRunner
from dsbackup.scheduler.state import ArchiveEntry


def _cpu() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _count_parent_bytes(name: str) -> list[int]:
    """Wrap the reader's member checks: bytes of `name`'s members hashed, in a list cell."""
    cell = [0]
    one, bulk = ArchiveReader._checked_member, ArchiveReader.check_stored_members

    def checked_member(self, i, *, catalog, keep):
        if Path(str(self.path)).name == name:
            cell[0] += (self.index.catalog(i) if catalog else self.entry(i)).length
        return one(self, i, catalog=catalog, keep=keep)

    def check_stored_members(self, seqs, *, catalog=False):
        if Path(str(self.path)).name == name:
            cell[0] += sum(self.entry(int(i)).length for i in seqs)
        return bulk(self, seqs, catalog=catalog)

    ArchiveReader._checked_member = checked_member
    ArchiveReader.check_stored_members = check_stored_members
    return cell


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    d = Path(tempfile.mkdtemp(prefix="sched-parent-reads-",
                              dir=sys.argv[2] if len(sys.argv) > 2 else None))
    src = d / "src"
    rng = __import__("random").Random(7)
    datasets.write_lmdb(str(src), ((b"/blocks/K%07d" % i, rng.randbytes(16384))
                                   for i in range(6000)))
    runner = ManagerRunner()

    class Rereading(ManagerRunner):
        def verify(self, path, deep, sample):  # no trusted_chain keyword: reads the chain
            return super().verify(path, deep, sample)

    verify = bool(os.environ.get("VERIFY"))
    modes = ("auto", "false", "reread") if verify else ("auto", "false")
    full = runner.run(ScheduledBackup(id="b", name="b", schedule="@daily",
                                      source=f"lmdb:{src}"), d / "full.tar.gz",
                      threading.Event())
    entry = ArchiveEntry(path=str(full.path), created=full.created,
                         fingerprint=full.fingerprint, parent=None, verified=True)
    hashed = _count_parent_bytes("full.tar.gz")
    clock = ManualClock(datetime(2026, 1, 5, tzinfo=timezone.utc))
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    nbytes: dict[str, int] = {}
    for rnd in range(rounds):
        for mode in modes if rnd % 2 == 0 else modes[::-1]:
            sched = ScheduledBackup(id="b", name=f"b{mode}{rnd}", schedule="@daily",
                                    source=f"lmdb:{src}", incremental=True, full_every=7,
                                    backup_config={"trust_parent": False} if mode == "false"
                                    else None)
            if os.environ.get("COLD"):
                fd = os.open(full.path, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            hashed[0] = 0
            c, t = _cpu(), time.perf_counter()
            out = run_job(sched, [entry], runner=Rereading() if mode == "reread" else runner,
                          clock=clock, backup_dir=d / "out",
                          policy=RetentionPolicy(keep_last=1000), tz=ZoneInfo("UTC"),
                          verify=verify, trigger="bench", cancel=threading.Event())
            wall[mode].append(time.perf_counter() - t)
            cpu[mode].append(_cpu() - c)
            assert out.record.ok and out.record.parent, out.record
            nbytes[mode] = hashed[0]
            os.unlink(out.record.archive)
    print(json.dumps({"cold": bool(os.environ.get("COLD")), "verify_after_backup": verify,
                      "parent_bytes": full.path.stat().st_size,
                      "parent_bytes_hashed": nbytes,
                      "wall_median": {k: statistics.median(v) for k, v in wall.items()},
                      "cpu_median": {k: statistics.median(v) for k, v in cpu.items()}}))


if __name__ == "__main__":
    main()
