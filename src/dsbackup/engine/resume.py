"""`backup --resume`: continue a killed backup in its temporary file (docs/FORMAT.md §11.5).

The temp file a dead writer left beside the archive (no live lock, dsbackup.storage.tempfiles)
is rescanned (dsbackup.archive.resume); its manifest must match this run's settings; it is cut
after its last whole, checked chunk (a paged archive: after its last index page), and the store
is scanned again from the key after that chunk's last key — for LMDB in a new read snapshot,
recorded in the summary's `resumed` list.

An encrypted temp file is resumed with its own data key (the same key options as the backup)
under a new nonce epoch, one more than any run of it used, made durable on the file before
anything is written; a file whose sealing state is unknown or says its index was being written
is refused (docs/FORMAT.md §11.4, dsbackup.storage.resumestate).

An incremental temp file (`--parent`, the same parent: its fingerprint and index digest) gets
its references below the cut back from the parent's index (dsbackup.archive.resume); their raw
bytes, which no index field holds, are counted by the stream at its end, from the parent's
total less the chunks it knows (dsbackup.engine.parentraw); the incremental's
planner then goes on from the key after the cut (dsbackup.engine.incremental); a paged
incremental's references below the cut are its kept pages' own entries.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dsbackup.archive import format as fmt
from dsbackup.archive.epochs import MAX_EPOCH, resumed_runs
from dsbackup.archive.pages import default_page_entries
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.resume import ResumeState, is_encrypted, manifest_settings, rescan
from dsbackup.engine.full import FullStream
from dsbackup.engine.manifest import ScanOutcome, manifest_for, metadata_from_reader
from dsbackup.engine.parentraw import marks
from dsbackup.engine.plan import BackupPlan
from dsbackup.errors import (
    ArchiveError,
    IntegrityError,
    KeyRequiredError,
    LockedError,
    UnsupportedArchive,
)
from dsbackup.metadata import BackupMetadata
from dsbackup.pipeline.central import ChunkSettings, central_chunks
from dsbackup.storage import resumestate
from dsbackup.storage.local import ResumedSink
from dsbackup.storage.tempfiles import (
    live_writer,
    stale_temp_files,
    temp_path_for,
    temp_prefix,
)

log = logging.getLogger(__name__)


@dataclass
class Resumption:
    state: ResumeState
    sink: ResumedSink
    epoch: dict[str, Any]  # this run's `resumed` entry (its snapshot filled in by the scan)
    fd: int  # the temp file's (the sink's), holding its lock
    # an incremental's: the parent chunks its kept part refers to (dsbackup.engine.parentraw
    # marks), and their raw bytes once the stream has counted them (before the summary)
    below: bytearray | None = None
    late_raw_bytes: int = 0

    @property
    def start_key(self) -> bytes:
        """Where the store is read on from: the key after the kept chunks' last."""
        last = self.state.last_key
        return b"" if last is None else last + b"\x00"

    def record(self, snapshot: int | None = None) -> None:
        """Keep the resume history on the temp file, for a later resume of this one."""
        if snapshot is not None:
            self.epoch["snapshot"] = snapshot
        resumestate.save_epochs(self.fd, [*self.state.epochs, self.epoch])


def find_temp(final: Path) -> tuple[Path, int] | None:
    """A dead writer's temp file for `final` and an fd (read-write) holding its lock; the
    largest when there are several. None when there is none."""
    prefix = temp_prefix(final)
    found = sorted((p for p in stale_temp_files(final.parent) if p.name.startswith(prefix)),
                   key=lambda p: p.stat().st_size if p.exists() else -1, reverse=True)
    for p in found:
        try:
            fd = os.open(p, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # another process took it meanwhile
            continue
        return p, fd
    return None


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """The first setting in which the temp file's manifest and this run's differ."""
    checks: list[tuple[str, Any, Any]] = [
        ("format", old.get("format"), new.get("format")),
        ("tool", old.get("tool"), new.get("tool")),
        ("source uri", (old.get("source") or {}).get("uri"), new["source"].get("uri")),
        ("source backend", (old.get("source") or {}).get("backend"),
         new["source"].get("backend")),
        ("parent", _parent(old.get("parent")), _parent(new.get("parent"))),
        ("node files (kubo: vs --datastore-only)", old.get("node") is not None,
         new.get("node") is not None),
    ]
    olds = manifest_settings(old)
    for name, value in new["settings"].items():
        checks.append((name, olds.get(name), value))
    for name, was, now in checks:
        if name == "parent" and was is not None and now is not None and was[1:] == now[1:]:
            continue  # the same archive (found under another name or path)
        if was != now:
            if name == "parent":
                was, now = (None if p is None else p[0] for p in (was, now))
            return f"{name} is {json.dumps(was)} there, {json.dumps(now)} now"
    return None


def _parent(p: Any) -> tuple[str, Any, Any] | None:
    """A manifest's parent as (what to show, fingerprint, index digest): an archive's
    identity is its fingerprint and index digest; its name and path are hints."""
    if not isinstance(p, dict):
        return None if p is None else (str(p), p, None)
    return (f"{p.get('name')} (fingerprint {p.get('fingerprint')})", p.get("fingerprint"),
            p.get("index_xxh3"))


def _runs(epochs: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(epoch, from_seq) of the earlier resumes, as far as the history is well formed."""
    out: list[tuple[int, int]] = []
    for e in epochs:
        if not (isinstance(e, dict) and type(e.get("epoch")) is int
                and type(e.get("from_seq")) is int):
            break
        out.append((e["epoch"], e["from_seq"]))
    return out


def _check_sealing(fd: int, name: str) -> None:
    """An encrypted temp file is resumable only while its writer was sealing chunks: its
    sealing state says so (docs/FORMAT.md §11.4)."""
    state = resumestate.sealing(fd)
    if state == resumestate.WRITING:
        return
    if state == resumestate.FINISHING:
        why = ("its writer was killed while writing the index, after the last chunk: an "
               "encrypted archive's index is sealed once")
    else:
        why = ("it has no sealing state (this filesystem does not keep user extended "
               "attributes, or its writer could not record them), so the nonces its runs used "
               "are not known")
    raise ArchiveError(f"cannot resume {name}: {why}; leave out --resume to start again "
                       "(that removes it)")


def _paged_difference(paged: bool, mode: str) -> str | None:
    if paged and mode == "never":
        return "the index is paged there, --paged-index never now"
    if not paged and mode == "always":
        return "the index is single there, --paged-index always now"
    return None


def _settings_difference(plan: BackupPlan, old: dict[str, Any], paged: bool
                         ) -> tuple[BackupPlan, str | None]:
    """`plan` with the file's chunk size when this run's is auto, and the first setting in
    which the file and this run differ (None: none)."""
    settings = manifest_settings(old)
    if plan.cfg.chunk_size is None and isinstance(settings.get("chunk_size"), int):
        plan = dataclasses.replace(plan, chunk_size=settings["chunk_size"])  # auto: kept
    return plan, (_difference(old, manifest_for(plan))
                  or _paged_difference(paged, plan.cfg.paged_index))


def _whole(plan: BackupPlan, tmp: Path, fd: int) -> bool:
    """Whether the temp file is already a whole archive (its writer was killed while it was
    checked before the rename, or renamed): a valid trailer, and index and manifest that read
    with this run's key; its settings must be this run's (else ArchiveError)."""
    size = os.fstat(fd).st_size
    try:
        fmt.Trailer.decode(os.pread(fd, fmt.TRAILER_SIZE, max(0, size - fmt.TRAILER_SIZE)),
                           size)
    except (IntegrityError, UnsupportedArchive):
        return False
    try:
        with ArchiveReader(tmp, key=plan.cfg.encryption) as r:
            manifest, paged = r.manifest, r.paged
            r.summary  # noqa: B018 - read and checked
    except KeyRequiredError:
        raise ArchiveError(f"cannot resume {tmp.name}: it is an encrypted archive; give "
                           "--encrypt and the key options it was written with") from None
    except IntegrityError:
        return False
    if plan.cfg.encryption is not None and r.cipher is None:
        raise ArchiveError(f"cannot resume {tmp.name}: it is not encrypted; leave out "
                           "--encrypt (or --resume, to start an encrypted backup again)")
    diff = _settings_difference(plan, manifest, paged)[1]
    if diff is not None:
        raise ArchiveError(f"cannot resume {tmp.name}: {diff} (give the same settings, or "
                           "leave out --resume to start again: that removes it)")
    return True


def _whole_damage(tmp: Path, parent: ArchiveReader | None) -> str | None:
    """Why the whole archive in a temp file fails a quick verify (every member's checksums,
    an incremental's references against its parent chain); None when it passes. Always run,
    --no-verify or not: its bytes were written by a killed process, at some earlier time."""
    from dsbackup.archive.verify import verify_archive

    dirs: list[str | os.PathLike[str]] = []
    if parent is not None:  # where the chain was found (the temp file's directory aside)
        chain = parent.open_parents()
        for p in [parent.path, *(chain.paths if chain else [])]:
            if isinstance(p, Path) and p.parent not in dirs:
                dirs.append(p.parent)
    report = verify_archive(tmp, deep=False, threads=2, parent_dirs=dirs)
    return None if report.ok else "; ".join(report.errors[:3])


def _commit_whole(plan: BackupPlan, final: Path, tmp: Path, fd: int,
                  parent: ArchiveReader | None) -> BackupMetadata:
    """Put a whole archive left in a temp file in place, as it is (checked before by
    _whole_damage); an incremental's check before the rename (its parent chain) still runs."""
    log.warning("resuming %s from %s: it is a whole archive (its writer was killed while "
                "checking or placing it): checked and put in place as it is", final, tmp.name)
    mine = temp_path_for(final)
    os.rename(tmp, mine)
    sink = ResumedSink(final, mine, fd, os.fstat(fd).st_size, overwrite=plan.cfg.overwrite)
    try:
        sink.commit(plan.check if parent is not None else None)  # a full one's: done
    except BaseException:
        sink.discard()  # as a backup whose check fails: nothing at the final path
        raise
    with ArchiveReader(final, key=plan.cfg.encryption) as r:
        return metadata_from_reader(r)


def plan_resumed(plan: BackupPlan, stream: FullStream
                 ) -> tuple[BackupPlan, FullStream] | BackupMetadata | None:
    """The plan and stream that continue a killed backup of `plan` (a full backup's), or None
    when no dead writer left a temp file for the archive; the metadata of the archive when the
    temp file was already whole (checked and put in place). ArchiveError (exit 2) when the
    file cannot be resumed by this run: "cannot resume: ..." names why."""
    taken = _take(plan)
    if taken is None or isinstance(taken, BackupMetadata):
        return taken
    plan = taken
    s = stream.settings
    settings_now = ChunkSettings(plan.chunk_size, s.chunk_max_bytes, s.level, s.exclude,
                                 s.catalog, s.target_chunk_bytes)
    return plan, ResumedStream(stream.ds, settings_now, stream.workers, stream.cancel,
                               plan.resume)


def plan_resumed_incremental(plan: BackupPlan, parent: ArchiveReader
                             ) -> BackupPlan | BackupMetadata | None:
    """As plan_resumed, for an incremental backup of `parent` (opened, with its chain): the
    plan whose ``resume`` the incremental's stream goes on from (its ``start_key``; ``below``
    marks the parent chunks the kept part refers to, whose raw bytes the stream counts)."""
    taken = _take(plan, parent)
    if isinstance(taken, BackupPlan):
        taken.resume.below = marks(parent.chunk_count, taken.resume.state.ref_seqs)
    return taken


def _take(plan: BackupPlan, parent: ArchiveReader | None = None
          ) -> BackupPlan | BackupMetadata | None:
    """`plan` with the temp file it continues (its ``resume``, the file rescanned and ours),
    None when there is none, or the metadata of a whole archive put in place. `parent`: an
    incremental's parent (its index gives the references below the cut)."""
    final = Path(plan.path)
    writer = live_writer(final)
    if writer is not None:  # not "no temporary file ... starting a new backup", then exit 4
        raise LockedError(f"{final}: another dsbackup process (PID {writer[0]}) is writing "
                          f"this archive ({writer[1].name}); it is not an interrupted backup "
                          "to resume: wait for it to finish")
    found = find_temp(final)
    if found is None:
        return None
    tmp, fd = found
    try:
        whole = _whole(plan, tmp, fd)
    except BaseException:
        os.close(fd)
        raise
    if whole:
        try:
            damage = _whole_damage(tmp, parent)
        except BaseException:
            os.close(fd)
            raise
        if damage is None:
            return _commit_whole(plan, final, tmp, fd, parent)
        # resumed as any killed backup's file: cut before its first damaged member
        log.warning("resuming %s from %s: it is a whole archive but fails its check (%s): "
                    "its whole, checked members are kept and the rest written again", final,
                    tmp.name, damage)
    state: ResumeState | None = None
    try:
        epochs = resumestate.load_epochs(fd)
        runs = _runs(epochs)
        if is_encrypted(fd) and plan.cfg.encryption is not None:
            _check_sealing(fd, tmp.name)  # before reading the file
            try:  # its epochs must be exact: the nonces of the runs that wrote it
                runs = resumed_runs({"resumed": epochs}, tmp.name)
            except IntegrityError:
                raise ArchiveError(f"cannot resume {tmp.name}: its resume history "
                                   f"({resumestate.EPOCHS_XATTR}) is damaged; leave out "
                                   "--resume to start again") from None
        state = rescan(fd, str(tmp), key=plan.cfg.encryption, runs=runs,
                       page_entries=plan.page_entries or default_page_entries(),
                       parent=None if parent is None else parent.index)
        old = state.manifest
        plan, diff = _settings_difference(plan, old, state.paged)
        if diff is not None:
            raise ArchiveError(f"cannot resume {tmp.name}: {diff} (give the same settings, or "
                               "leave out --resume to start again: that removes it)")
        try:
            created = datetime.fromisoformat(old["created"])
        except (KeyError, TypeError, ValueError):
            raise ArchiveError(f"cannot resume {tmp.name}: its manifest has no valid "
                               "'created'") from None
        used = [e["epoch"] for e in epochs if isinstance(e, dict)
                and type(e.get("epoch")) is int]
        number = max(used, default=len(epochs)) + 1
        epoch = {"epoch": number, "from_seq": state.next_seq, "snapshot": None}
        state.epochs = epochs
        if state.cipher is not None:  # the new epoch on disk before any member (§11.4)
            if number > MAX_EPOCH:
                raise ArchiveError(f"cannot resume {tmp.name}: resumed {number - 1} times, "
                                   "the most an encrypted archive can be")
            state.epoch = number
            try:
                resumestate.save_epochs(fd, [*epochs, epoch], durable=True)
            except OSError as exc:
                raise ArchiveError(f"cannot resume {tmp.name}: cannot record its new nonce "
                                   f"epoch on the file: {exc.strerror}") from None
        mine = temp_path_for(final)
        os.rename(tmp, mine)  # ours now: its name carries this process's PID
        sink = ResumedSink(final, mine, fd, state.end, overwrite=plan.cfg.overwrite,
                           kept_as=tmp)
    except BaseException:
        os.close(fd)  # the file stays as it was (resumable by a run with the right settings)
        if state is not None and state.cipher is not None:
            state.cipher.close()
        raise
    log.warning("resuming %s from %s: %d chunks (%d records%s) kept, %d bytes after them "
                "dropped; scanning on from %s", final, tmp.name, state.next_seq,
                state.records, f", {state.referenced} of them references" if parent else "",
                state.dropped, "the first key" if state.last_key is None
                else f"the key after {state.last_key!r}")
    return dataclasses.replace(plan, created=created, source=old["source"], page_entries=None,
                               resume=Resumption(state, sink, epoch, fd))


class _From:
    """The store from `start` on (the central scan asks for all of it), recording the LMDB
    snapshot (transaction id) its read transaction sees."""

    def __init__(self, ds: Any, start: bytes, on_snapshot: Any) -> None:
        self._ds, self._start, self._on_snapshot = ds, start, on_snapshot
        self.snapshot: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ds, name)

    def scan_batches(self, start: bytes = b"", end: bytes | None = None,
                     **kw: Any) -> Iterator[tuple[list[bytes], list[bytes]]]:
        start = max(start, self._start)
        txn_id = (getattr(self._ds, "last_txn_id", None)
                  if getattr(self._ds, "scheme", "") == "lmdb" else None)
        if txn_id is None:
            yield from self._ds.scan_batches(start, end, **kw)
            return
        for _ in range(8):  # a write between the two reads: the snapshot is unknown, again
            before = txn_id()
            it = self._ds.scan_batches(start, end, **kw)
            first = next(it, None)  # the read transaction begins here
            if txn_id() == before:
                self.snapshot = before
                self._on_snapshot(before)
                break
            it.close()
        else:
            it = self._ds.scan_batches(start, end, **kw)
            first = next(it, None)
        if first is None:
            return
        yield first
        yield from it


class ResumedStream(FullStream):
    """The rest of a full backup: the central scan from the key after the kept chunks."""

    def __init__(self, ds: Any, settings: ChunkSettings, workers: int,
                 cancel: threading.Event, resumption: Resumption) -> None:
        super().__init__(ds, settings, workers, False, cancel)
        self.resumption = resumption
        last = resumption.state.last_key
        self._view = _From(ds, b"" if last is None else last + b"\x00", resumption.record)

    def __enter__(self) -> ResumedStream:
        from dsbackup.engine.full import cpu_seconds

        self._chunks = central_chunks(self._view, self.settings, threads=self.workers,
                                      stats=self.stats, cancel=self.cancel)
        self._cpu0 = cpu_seconds()
        self.resumption.record()
        return self

    def outcome(self) -> ScanOutcome:
        out = super().outcome()
        r = self.resumption
        out.snapshot = self._view.snapshot
        out.extra["resumed"] = [*r.state.epochs, r.epoch]
        return out
