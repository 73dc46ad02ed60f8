"""``MigrationManager``: runs a plan against a source and a target, journaled and resumable.

Order of a run: validate the plan; open the stores (read-only in a dry run); stop at once if
the version stamp says this plan already ran; read the journal (resume or refuse); journal
``begin``; archive the source if ``backup_before``; run the steps, each checkpointing; write
the stamp; journal ``done``; drop the journal if a cleanup step asked for it. On a failure
the rollback runs (the plan's rollback steps, else the pre-migration archive) and the result
says exactly what it reverted. See docs/MIGRATION.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from dsbackup.datastores import open_datastore, parse_uri
from dsbackup.engine.targetlock import TargetLock
from dsbackup.errors import (
    EXIT_ERROR,
    EXIT_WARNING,
    Cancelled,
    ConfigError,
    DatastoreError,
    DsBackupError,
    IntegrityError,
    MigrationError,
)
from dsbackup.migration.config import MigrationConfig
from dsbackup.migration.dryrun import open_readonly
from dsbackup.migration.engine import StepRunner
from dsbackup.migration.journal import (
    Journal,
    JournalState,
    read_stamp,
    remove_stamp,
    write_stamp,
)
from dsbackup.migration.kuborepo import KuboRun
from dsbackup.migration.plan import (
    SOURCE,
    TARGET,
    MigrationPlan,
    MigrationStep,
    MigrationType,
    load_plan,
)
from dsbackup.migration.result import MigrationResult, RollbackReport, StepResult
from dsbackup.migration.runtime import ProgressEvent, RunContext
from dsbackup.storage import S3Location, as_location, is_file

__all__ = ["MigrationManager"]

log = logging.getLogger(__name__)

StoreLike = Any  # a datastore URI (str / PathLike) or an opened Datastore object


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _store_path(ds: Any) -> Path | None:
    """The filesystem path behind a store (URI, path or opened store), or ``None``."""
    uri = os.fspath(ds) if isinstance(ds, (str, os.PathLike)) else getattr(ds, "uri", None)
    if not isinstance(uri, str):
        return None
    scheme, path, _ = parse_uri(uri)
    if scheme == "memory" or not path:
        return None
    return Path(path).resolve()


def _same_uri(a: str, b: str) -> bool:
    sa, pa, _ = parse_uri(a)
    sb, pb, _ = parse_uri(b)
    if sa == "memory" or sb == "memory":
        return False  # every memory: URI opens a new store
    return os.path.realpath(pa) == os.path.realpath(pb)


def _write_options(uri: str) -> dict[str, Any]:
    """LMDB stores are written without an fsync per transaction: every journal checkpoint
    syncs the store first (``sync()`` forces LMDB's flush), so nothing the journal claims is
    lost, and a kill loses nothing the OS already has. A URI that sets ``sync`` keeps it."""
    scheme, _path, params = parse_uri(uri)
    if scheme == "lmdb" and "sync" not in params:
        return {"sync": False}
    return {}


def _remove_path(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refs_written(plan_steps: list[MigrationStep]) -> set[str]:
    """The store references (``source``, ``target`` or a URI) that these steps may write."""
    refs: set[str] = set()
    for step in plan_steps:
        if step.kind is MigrationType.VALIDATE:
            continue
        refs.add(step.target)
        if step.kind is MigrationType.MOVE:
            refs.add(step.source)
    return refs


# stores the pre-migration archive can be restored into beside the source, then swapped in
_STAGEABLE = {"lmdb", "sqlite", "flatfs", "leveldb"}


class _Stores:
    """The stores of one run: ``source``, ``target`` and any URI a step names, each opened
    once (an LMDB environment must never be opened twice in one process)."""

    def __init__(self, readonly: bool) -> None:
        self.readonly = readonly
        self.by_name: dict[str, Any] = {}
        self._owned: list[Any] = []
        self._by_uri: dict[str, Any] = {}
        self._uri_of: dict[int, str] = {}

    def _open(self, uri: str, *, must_exist: bool, readonly: bool = False) -> Any:
        for known, ds in self._by_uri.items():
            if _same_uri(known, uri):
                return ds
        scheme, path, _ = parse_uri(uri)
        if must_exist and scheme != "memory" and path and not os.path.exists(path):
            # opening for writing would create an empty store and "migrate" nothing
            raise DatastoreError(f"datastore {uri} does not exist")
        try:
            ds = (open_readonly(uri) if self.readonly or readonly
                  else open_datastore(uri, **_write_options(uri)))
        except DatastoreError:
            if must_exist or not self.readonly:
                raise
            # dry run on a target that does not exist yet: it reads as empty
            ds = open_datastore("memory:", readonly=True)
            ds.uri = uri
        self._owned.append(ds)
        self._by_uri[uri] = ds
        self._uri_of[id(ds)] = uri
        return ds

    def add(self, name: str, store: StoreLike, *, must_exist: bool, readonly: bool = False
            ) -> Any:
        """``readonly``: a store nothing writes (a copy's source): opened so that not a
        byte of it changes (no flatfs ``.temp``, LevelDB through a snapshot)."""
        if isinstance(store, (str, os.PathLike)):
            ds = self._open(os.fspath(store), must_exist=must_exist, readonly=readonly)
        else:
            ds = store
            uri = getattr(ds, "uri", None)
            if isinstance(uri, str):
                self._by_uri.setdefault(uri, ds)
        self.by_name[name] = ds
        return ds

    def is_written(self, name: str, refs: set[str]) -> bool:
        """True when one of ``refs`` names the store registered as ``name`` (the same
        object, or a URI of the same path)."""
        ds = self.by_name[name]
        path = _store_path(ds)
        for ref in refs:
            if ref in (SOURCE, TARGET):
                if self.by_name.get(ref) is ds:
                    return True
            elif path is not None and _store_path(ref) == path:
                return True
        return False

    def resolve(self, ref: str) -> Any:
        if ref in (SOURCE, TARGET):
            return self.by_name[ref]
        return self._open(ref, must_exist=True)

    def exclusive(self, *stores: Any) -> _Lent:
        """Lend owned LMDB stores to code with its own liblmdb: they are closed now, claimed
        in the one-environment-per-process registry, and reopened (same URI) on exit.
        Raises ``ValueError`` when a store was not opened by this run or is not LMDB."""
        for ds in stores:
            if ds not in self._owned or getattr(ds, "scheme", "") != "lmdb":
                raise ValueError("only LMDB stores this run opened can be lent")
        return _Lent(self, list(stores))

    def owns(self, ds: Any) -> bool:
        return ds in self._owned

    def swap_in(self, ds: Any, staged: Path) -> Any:
        """Replace the owned store ``ds`` by the store restored at ``staged`` (same kind):
        ``ds`` is closed, its path renamed aside, ``staged`` renamed into place, the old one
        removed, and the store reopened under its URI (returned)."""
        uri = self._uri_of[id(ds)]
        path = _store_path(ds)
        assert path is not None
        ds.close()
        old = path.with_name(f".{path.name}.dsmigrate-old-{os.getpid()}")
        moved: list[tuple[Path, Path]] = []
        try:
            for suffix in ("", "-wal", "-shm"):  # SQLite's side files go with their file
                a = path.with_name(path.name + suffix)
                if a.exists():
                    b = old.with_name(old.name + suffix)
                    os.rename(a, b)
                    moved.append((b, a))
            os.rename(staged, path)
        except BaseException:
            for b, a in reversed(moved):  # put the store back exactly where it was
                os.rename(b, a)
            self._reopen_as(ds, uri)
            raise
        _fsync_dir(path.parent)
        new = self._reopen_as(ds, uri)
        for b, _a in moved:
            _remove_path(b)
        return new

    def _reopen_as(self, old: Any, uri: str) -> Any:
        new = open_datastore(uri, **_write_options(uri))
        self._uri_of[id(new)] = uri
        self._replace(old, new)
        return new

    def _replace(self, old: Any, new: Any) -> None:
        self._owned[self._owned.index(old)] = new
        for table in (self.by_name, self._by_uri):
            for k, v in list(table.items()):
                if v is old:
                    table[k] = new

    def close(self) -> None:
        for ds in reversed(self._owned):
            try:
                ds.close()
            except Exception:  # noqa: BLE001 - closing must not hide the real outcome
                log.exception("closing %s failed", getattr(ds, "uri", ds))
        self._owned.clear()


class _Lent:
    """Context manager of :meth:`_Stores.exclusive`; ``stores`` holds the reopened objects."""

    def __init__(self, owner: _Stores, stores: list[Any]) -> None:
        self.owner = owner
        self.stores = stores
        self._uris = [owner._uri_of[id(ds)] for ds in stores]
        self._claims = ExitStack()

    def __enter__(self) -> _Lent:
        from dsbackup.datastores import lmdb as lmdb_backend

        for ds in self.stores:
            ds.close()
        try:
            for ds in self.stores:
                self._claims.enter_context(lmdb_backend.claim(ds.path, "dsbackup.migration"))
        except BaseException:
            self._claims.close()
            self._reopen()
            raise
        return self

    def _reopen(self) -> None:
        fresh = []
        for old, uri in zip(self.stores, self._uris):
            new = open_datastore(uri, **_write_options(uri))
            self.owner._uri_of[id(new)] = uri
            self.owner._replace(old, new)
            fresh.append(new)
        self.stores = fresh

    def __exit__(self, *exc: object) -> None:
        self._claims.close()
        self._reopen()


class MigrationManager:
    """Runs migration plans. ``get_metrics()`` sums up the runs of this manager."""

    def __init__(self, config: MigrationConfig | None = None) -> None:
        self.config = config or MigrationConfig()
        self._lock = threading.Lock()
        self._metrics: dict[str, Any] = {
            "migrations_total": 0, "migrations_succeeded": 0, "migrations_failed": 0,
            "dry_runs": 0, "rollbacks": 0, "records_total": 0, "bytes_total": 0,
            "last_duration_s": None, "last_records_per_s": None, "last_plan": None,
        }

    # -- public API --------------------------------------------------------------------------
    def execute_migration(self, plan: MigrationPlan | str | os.PathLike[str],
                          source: StoreLike, target: StoreLike, *,
                          progress: Callable[[ProgressEvent], None] | None = None,
                          cancel: threading.Event | None = None) -> MigrationResult:
        """Run ``plan`` from ``source`` to ``target`` (URIs or opened datastores).

        Raises :class:`ConfigError` for an invalid plan or configuration and
        :class:`MigrationError` (e.g. ``JournalCorrupt``) when it refuses to start; once steps
        run, failures are reported in the returned result (``success`` false, ``error``,
        ``exit_code``, ``rollback``), not raised.
        """
        plan = self._load(plan)
        cfg = self.config.with_overrides(plan.config)
        result = MigrationResult(plan.id, plan.version, _now(), dry_run=cfg.dry_run)
        kubo = self._kubo(plan, cfg, source, target)
        if not cfg.dry_run and self._already_done(plan, cfg, target, result):
            if kubo is not None:
                kubo.check_still_migrated(result.stamp_path)
            result.finished_at = _now()
            self._record(result)
            return result
        if kubo is not None:  # before any store is opened: refuse a repo at another version
            journal, _ = self._state_files(plan, cfg, target)
            kubo.preflight(started=journal is not None and journal.read().started,
                           dry_run=cfg.dry_run)
        locks = ExitStack() if cfg.dry_run else self._lock_stores(plan, cfg, source, target)
        stores = _Stores(readonly=cfg.dry_run)
        try:
            src = stores.add(SOURCE, source, must_exist=True,
                             readonly=not self._writes_source(plan, cfg, source, target))
            dst = stores.add(TARGET, target, must_exist=False)
            if cfg.dry_run:
                self._run_steps(plan, cfg, stores, result, None, JournalState(),
                                progress, cancel)
                result.success = result.error is None
                result.message = "dry run: nothing was written"
            else:
                self._execute(plan, cfg, stores, src, dst, result, progress, cancel, kubo)
        finally:
            stores.close()
            locks.close()
            result.finished_at = result.finished_at or _now()
            self._record(result)
        return result

    def rollback_migration(self, plan: MigrationPlan | str | os.PathLike[str],
                           source: StoreLike, target: StoreLike) -> MigrationResult:
        """Undo a migration (finished or not): remove its stamp, run the plan's rollback
        steps or restore its pre-migration archive, and retire its journal."""
        plan = self._load(plan)
        cfg = self.config.with_overrides(plan.config)
        if cfg.dry_run:
            raise ConfigError("a rollback cannot be a dry run")
        result = MigrationResult(plan.id, plan.version, _now())
        kubo = self._kubo(plan, cfg, source, target)
        locks = self._lock_stores(plan, cfg, source, target, rollback=True)
        stores = _Stores(readonly=False)
        try:
            stores.add(SOURCE, source, must_exist=True)
            dst = stores.add(TARGET, target, must_exist=False)
            journal, stamp_path = self._state_files(plan, cfg, dst)
            state = journal.read() if journal else JournalState()
            stamp = read_stamp(stamp_path) if stamp_path else None
            backup = state.backup_path or (stamp or {}).get("backup_path")
            result.backup_path = backup
            report = self._rollback(plan, cfg, stores, result, journal, stamp_path, backup,
                                    kubo=kubo)
            result.rollback = report
            result.success = report.success and report.performed
            if not report.success:
                result.error = result.error or "RollbackFailed"
                result.exit_code = result.exit_code or EXIT_ERROR
            elif not report.performed:
                # no data was reverted (at most our stamp removed): a warning, never "ok"
                result.error = "NothingToRollBack"
                result.exit_code = EXIT_WARNING
                result.message = f"nothing to roll back: {report.message}"
                result.error_log.append(report.message)
        finally:
            stores.close()
            locks.close()
            result.finished_at = _now()
            self._record(result)
        return result

    def get_metrics(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._metrics)

    # -- internals ---------------------------------------------------------------------------
    @staticmethod
    def _lock_stores(plan: MigrationPlan, cfg: MigrationConfig, source: StoreLike,
                     target: StoreLike, rollback: bool = False) -> ExitStack:
        """Take the write lock (targetlock.py) of every store this run may write: the
        target, the source when a step, a rollback step or the pre-migration archive's
        restore may write it, and any other store a step writes. A store another process
        writes gives LockedError (exit 4) before anything is opened."""
        refs = _refs_written(plan.steps + plan.rollback)
        stack = ExitStack()
        what = f"migration {plan.id}" + (" rollback" if rollback else "")
        try:
            stack.enter_context(TargetLock(target, what))
            if rollback or cfg.backup_before or SOURCE in refs:
                stack.enter_context(TargetLock(source, what, create_parent=False))
            for ref in sorted(refs - {SOURCE, TARGET}):
                stack.enter_context(TargetLock(ref, what, create_parent=False))
        except BaseException:
            stack.close()
            raise
        return stack

    @staticmethod
    def _load(plan: MigrationPlan | str | os.PathLike[str]) -> MigrationPlan:
        if isinstance(plan, MigrationPlan):
            plan.validate()
            return plan
        return load_plan(plan)

    def _kubo(self, plan: MigrationPlan, cfg: MigrationConfig, source: Any, target: Any
              ) -> KuboRun | None:
        """The Kubo side of a plan with a ``[kubo]`` table (version file, revert log)."""
        if plan.kubo is None:
            return None
        journal, _ = self._state_files(plan, cfg, target)
        return KuboRun(plan.kubo, plan, source, target,
                       journal.path.parent if journal is not None else None)

    @staticmethod
    def _writes_source(plan: MigrationPlan, cfg: MigrationConfig, source: Any,
                       target: Any) -> bool:
        """Whether anything in this run may write to the source store: in place, a step
        (or rollback step) writing it or moving out of it, or a pre-migration archive that a
        rollback would restore into it. Otherwise it is opened read-only (LMDB excepted:
        its writable open changes no data and the native copier needs it)."""
        if not isinstance(source, (str, os.PathLike)) or cfg.backup_before:
            return True
        scheme, spath, _ = parse_uri(os.fspath(source))
        if scheme is None and os.path.isdir(spath):
            from dsbackup.datastores.registry import detect_scheme

            try:
                scheme = detect_scheme(spath)
            except DsBackupError:
                return True
        if scheme == "lmdb":
            return True  # the native LMDB copier lends and reopens both environments
        if isinstance(target, (str, os.PathLike)) and _same_uri(os.fspath(source),
                                                                os.fspath(target)):
            return True
        src_uri = os.fspath(source)
        for step in plan.steps + plan.rollback:
            refs = [step.target] + ([step.source] if step.kind is MigrationType.MOVE else [])
            for ref in refs:
                if ref == SOURCE or (ref not in (SOURCE, TARGET) and _same_uri(ref, src_uri)):
                    return True
        return False

    def _state_files(self, plan: MigrationPlan, cfg: MigrationConfig, dst: Any
                     ) -> tuple[Journal | None, Path | None]:
        if cfg.state_dir is not None:
            state = Path(cfg.state_dir)
        else:
            p = _store_path(dst)
            if p is None:
                return None, None
            state = p.with_name(p.name + ".dsmigrate")
        return Journal(state / f"{plan.id}.journal"), state / f"{plan.id}.version"

    def _already_done(self, plan: MigrationPlan, cfg: MigrationConfig, target: Any,
                      result: MigrationResult) -> bool:
        """True (and ``result`` filled in) when the target's stamp says this plan ran; checked
        before the stores are even opened, so a re-run touches nothing."""
        _, stamp_path = self._state_files(plan, cfg, target)
        stamp = read_stamp(stamp_path) if stamp_path else None
        if stamp is None or stamp.get("plan_id") != plan.id:
            return False
        if stamp.get("version") != plan.version or stamp.get("digest") != plan.digest():
            raise MigrationError(
                f"target {stamp.get('target') or target} was migrated by plan {plan.id!r} "
                f"version {stamp.get('version')!r} with different steps (stamp {stamp_path}); "
                f"roll it back first or use a new plan id")
        result.already_completed = True
        result.success = True
        result.stamp_path = str(stamp_path)
        result.backup_path = stamp.get("backup_path")
        result.steps = [StepResult(s.id, s.kind.value, status="skipped",
                                   message="already migrated (version stamp present)")
                        for s in plan.steps]
        result.message = f"already migrated: stamp {stamp_path}"
        return True

    def _execute(self, plan: MigrationPlan, cfg: MigrationConfig, stores: _Stores, src: Any,
                 dst: Any, result: MigrationResult,
                 progress: Callable[[ProgressEvent], None] | None,
                 cancel: threading.Event | None, kubo: KuboRun | None = None) -> None:
        journal, stamp_path = self._state_files(plan, cfg, dst)
        digest = plan.digest()
        if journal is not None:
            result.journal_path = str(journal.path)
            result.stamp_path = str(stamp_path)
        if self._already_done(plan, cfg, dst, result):
            return
        state = journal.read() if journal is not None else JournalState()
        if state.started:
            begin = state.begin or {}
            if state.done:
                raise MigrationError(
                    f"journal {journal.path if journal else ''} says the migration finished "
                    f"but its version stamp is missing (an interrupted rollback?); run "
                    f"--rollback again")
            if begin.get("digest") != digest:
                raise MigrationError(
                    f"journal {journal.path if journal else ''} belongs to a different plan "
                    f"(digest {str(begin.get('digest'))[:12]}, this plan "
                    f"{digest[:12]}); roll it back or remove the journal")
            if not cfg.resume:
                cp = state.checkpoint or {}
                raise MigrationError(
                    f"an unfinished migration of plan {plan.id!r} exists (journal "
                    f"{journal.path if journal else ''}, step {cp.get('id', '?')}, phase "
                    f"{cp.get('phase', '?')}); re-run with --resume to continue or "
                    f"--rollback to undo it")
            result.resumed = True
        if journal is not None:
            journal.open()
            if not state.started:
                journal.append({"t": "begin", "plan": plan.id, "version": plan.version,
                                "digest": digest, "source": getattr(src, "uri", None),
                                "target": getattr(dst, "uri", None),
                                "ts": _now().isoformat()})
        result.steps = [StepResult(s.id, s.kind.value) for s in plan.steps]
        try:
            try:
                if cfg.backup_before:
                    result.backup_path = self._backup(plan, cfg, src, journal, state,
                                                      stores.by_name)
                ctx = self._run_steps(plan, cfg, stores, result, journal, state, progress,
                                      cancel, kubo)
                if kubo is not None:  # Kubo's version file: after every step succeeded
                    written = kubo.finish()
                    if written is not None:
                        result.message = f"{written} is now {kubo.spec.to_version}"
                if stamp_path is not None:
                    write_stamp(stamp_path, {
                        "plan_id": plan.id, "version": plan.version, "digest": digest,
                        "completed_at": _now().isoformat(), "backup_path": result.backup_path,
                        "source": getattr(src, "uri", None), "target": getattr(dst, "uri", None),
                    })
                if journal is not None:
                    journal.append({"t": "done"})
                    if ctx.cleanup_requested:
                        journal.remove()
                        result.journal_path = None
                result.success = True
            except (Cancelled, KeyboardInterrupt) as exc:
                result.error = type(exc).__name__
                result.exit_code = getattr(exc, "exit_code", 130)
                result.error_log.append(str(exc) or "interrupted")
                if isinstance(exc, KeyboardInterrupt):
                    raise
            except DsBackupError as exc:
                self._fail(plan, cfg, stores, result, journal, stamp_path, exc, kubo)
            except Exception as exc:  # noqa: BLE001 - reported in the result, then rolled back
                log.exception("migration step crashed")
                self._fail(plan, cfg, stores, result, journal, stamp_path, exc, kubo)
        finally:
            if journal is not None:
                journal.close()

    def _fail(self, plan: MigrationPlan, cfg: MigrationConfig, stores: _Stores,
              result: MigrationResult, journal: Journal | None, stamp_path: Path | None,
              exc: BaseException, kubo: KuboRun | None = None) -> None:
        if stamp_path is not None and not stamp_path.exists():
            result.stamp_path = None  # never name a stamp that was not written
        result.error = type(exc).__name__
        result.exit_code = getattr(exc, "exit_code", EXIT_ERROR)
        result.error_log.append(f"{type(exc).__name__}: {exc}")
        if journal is not None:
            journal.append({"t": "failed", "error": f"{type(exc).__name__}: {exc}"})
        if not any(st.status != "not_run" for st in result.steps):
            # e.g. the pre-migration backup failed: no step touched anything
            result.rollback = RollbackReport(message="no step ran: nothing to roll back")
            if journal is not None:
                journal.retire("failed")
                result.journal_path = None
        elif cfg.rollback_on_failure:
            ran = {i for i, st in enumerate(result.steps) if st.status != "not_run"}
            result.rollback = self._rollback(
                plan, cfg, stores, result, journal, stamp_path, result.backup_path, ran,
                reverted=getattr(exc, "dsmigrate_reverted", None),
                partial=bool(getattr(exc, "dsmigrate_partial", False)), kubo=kubo)

    def _backup(self, plan: MigrationPlan, cfg: MigrationConfig, src: Any,
                journal: Journal | None, state: JournalState,
                stores: dict[str, Any] | None = None) -> str:
        if state.backup_path and is_file(state.backup_path):  # a file or an object
            return state.backup_path  # resumed run: the archive of the untouched source
        try:
            from dsbackup.engine.backup import BackupConfig, BackupManager
        except ImportError:
            raise MigrationError("backup_before needs the backup layer "
                                 "(dsbackup.engine.backup.BackupManager), which is not available in "
                                 "this installation") from None
        if cfg.backup_dir is not None:  # a directory, or an s3://BUCKET/PREFIX/
            loc = as_location(cfg.backup_dir)
            bdir = S3Location(loc.bucket, loc.prefix) if isinstance(loc, S3Location) else loc
        elif journal is not None:
            bdir = journal.path.parent
        else:
            raise ConfigError("backup_before needs backup_dir (or state_dir) when the target "
                              "has no filesystem path")
        stamp = _now().strftime("%Y%m%dT%H%M%SZ")
        path = bdir / f"{plan.id}-{plan.version}-pre-{stamp}.tar.gz"
        from dsbackup.archive.guard import check_archive_outside

        # the archive may lie in no store of the run (the steps would write over it)
        check_archive_outside(path, list((stores or {"source": src}).items()))
        if isinstance(bdir, Path):
            bdir.mkdir(parents=True, exist_ok=True)
        meta = BackupManager(BackupConfig()).create_backup(src, path)
        final = str(getattr(meta, "path", None) or path)
        if journal is not None:
            journal.append({"t": "backup", "path": final})
        log.info("pre-migration archive of %s: %s", getattr(src, "uri", src), final)
        return final

    def _run_steps(self, plan: MigrationPlan, cfg: MigrationConfig, stores: _Stores,
                   result: MigrationResult, journal: Journal | None, state: JournalState,
                   progress: Callable[[ProgressEvent], None] | None,
                   cancel: threading.Event | None, kubo: KuboRun | None = None) -> RunContext:
        deadline = time.monotonic() + cfg.timeout if cfg.timeout else None
        ctx = RunContext(cfg, dry_run=cfg.dry_run, journal=journal, progress=progress,
                         cancel=cancel, deadline=deadline, steps_total=len(plan.steps),
                         error_log=result.error_log,
                         exclusive=None if cfg.dry_run else stores.exclusive)
        result.steps = [StepResult(s.id, s.kind.value) for s in plan.steps]
        written_refs: set[str] = set()  # dry run: stores an earlier step would have written
        for i, step in enumerate(plan.steps):
            if ctx.dry_run:
                self._dry_run_step(ctx, step, i, stores, result, written_refs)
                continue
            done = state.steps_done.get(i)
            if done is not None:
                res = StepResult.from_dict(done.get("result", {}))
                res.status = "completed"
                res.resumed = True
                res.message = (res.message + "; " if res.message else "") + \
                    "completed by an earlier, interrupted run"
                result.steps[i] = res
                self._stat(result, res)
                if step.kind is MigrationType.CLEANUP:
                    ctx.cleanup_requested = True
                continue
            cp = state.checkpoint if state.checkpoint and state.checkpoint.get("step") == i \
                else None
            if kubo is not None:  # Kubo's revert log, complete before the step writes
                kubo.before_step(step, stores.resolve(step.source),
                                 stores.resolve(step.target), cfg.batch_size)
            try:
                res = self._run_step(ctx, step, i, f"S{i}", stores, cp)
            except _StepFailed as failed:
                result.steps[i] = failed.result
                raise failed.cause from None
            result.steps[i] = res
            self._stat(result, res)
            if journal is not None:
                journal.append({"t": "step_done", "step": i, "id": step.id,
                                "result": {k: v for k, v in res.to_dict().items()
                                           if k != "sample"}})
        return ctx

    def _dry_run_step(self, ctx: RunContext, step: MigrationStep, i: int, stores: _Stores,
                      result: MigrationResult, written_refs: set[str]) -> None:
        """A dry run evaluates each step on the stores as they are now; earlier steps'
        writes are not simulated, so a comparison against a store they write is skipped."""
        reads_written = step.source in written_refs or (
            step.kind is MigrationType.VALIDATE and step.target in written_refs)
        if step.kind is not MigrationType.VALIDATE:
            written_refs.add(step.target)
            if step.kind is MigrationType.MOVE:
                written_refs.add(step.source)
        if reads_written and step.kind is MigrationType.VALIDATE:
            result.steps[i] = StepResult(step.id, step.kind.value, status="skipped",
                                         message="dry run: not evaluated, an earlier step "
                                                 "writes the store it checks")
            return
        try:
            res = self._run_step(ctx, step, i, f"S{i}", stores, None)
        except _StepFailed as failed:
            res = failed.result
            result.error = result.error or type(failed.cause).__name__
            result.exit_code = result.exit_code or failed.exit_code
            result.error_log.append(f"{step.id}: {failed.cause}")
            if not isinstance(failed.cause, DsBackupError):
                raise failed.cause from None
        if reads_written:
            res.message = ((res.message + "; ") if res.message else "") + \
                "dry run: evaluated on the store as it is now, before earlier steps' writes"
        result.steps[i] = res
        self._stat(result, res)

    def _run_step(self, ctx: RunContext, step: MigrationStep, index: int, tag: str,
                  stores: _Stores, cp: dict[str, Any] | None) -> StepResult:
        src = stores.resolve(step.source)
        dst = stores.resolve(step.target)
        runner = StepRunner(ctx, step, index, tag, src, dst, cp)
        log.info("step %s (%s): %s -> %s%s", step.id, step.kind.value,
                 getattr(src, "uri", "?"), getattr(dst, "uri", "?"),
                 " (resumed)" if cp else "")
        try:
            return runner.run()
        except BaseException as exc:
            runner.res.status = "failed"
            reverted = getattr(exc, "dsmigrate_reverted", None)
            runner.res.message = str(exc) + (f"; {reverted}" if reverted else "")
            raise _StepFailed(runner.res, exc) from exc

    @staticmethod
    def _stat(result: MigrationResult, res: StepResult) -> None:
        st = result.statistics
        for k, v in res.counts().items():
            st[f"total_{k}"] = st.get(f"total_{k}", 0) + v
        st["steps_completed"] = st.get("steps_completed", 0) + (1 if res.success else 0)

    def _rollback(self, plan: MigrationPlan, cfg: MigrationConfig, stores: _Stores,
                  result: MigrationResult, journal: Journal | None, stamp_path: Path | None,
                  backup: str | None, ran: set[int] | None = None, *,
                  reverted: str | None = None, partial: bool = False,
                  kubo: KuboRun | None = None) -> RollbackReport:
        """Undo what the steps in ``ran`` (all of the plan's when None) may have written.
        The version stamp and the journal are retired only when the rollback succeeded: a
        failed one leaves everything as it was, to be retried. ``reverted``: what the failed
        step undid itself; ``partial``: the failed step left a half-done in-place state
        (temp keys) that only ``--resume`` can finish — when nothing else reverts it, the
        journal is kept for that."""
        report = RollbackReport()
        steps = [s for i, s in enumerate(plan.steps) if ran is None or i in ran]
        rb_cfg = cfg.with_overrides({"dry_run": False})
        ctx = RunContext(rb_cfg, journal=None, steps_total=len(plan.rollback),
                         error_log=result.error_log)
        try:
            if kubo is not None and kubo.can_revert():
                report.method = "revert_log"
                rev, report.message = kubo.revert(stores.by_name[TARGET])
                report.restored_records = rev.restored
                report.restored_from = str(kubo.log.path) if kubo.log else None
                report.performed = True
            elif plan.rollback:
                report.method = "steps"
                for i, step in enumerate(plan.rollback):
                    try:
                        res = self._run_step(ctx, step, i, f"R{i}", stores, None)
                    except _StepFailed as failed:
                        report.steps.append(failed.result)
                        raise failed.cause from None
                    report.steps.append(res)
                report.performed = True
                report.message = (f"ran {len(report.steps)} rollback step(s): "
                                  + ", ".join(f"{s.step_id} ({s.type}: {s.written} written, "
                                              f"{s.deleted} deleted)" for s in report.steps))
            elif backup and not stores.is_written(SOURCE, _refs_written(steps)):
                # e.g. a copy step: it only read the source, so there is nothing to undo
                # there (and restoring the archive would only lose later writes)
                report.message = ("no step modified the source: source left as it was "
                                  "(the pre-migration archive was not needed); target left "
                                  "as is")
            elif backup:
                report.method = "backup"
                report.restored_from = backup
                report.restored_records = self._restore(backup, stores)
                report.performed = True
                report.message = (f"restored the source from {backup} "
                                  f"({report.restored_records} records); target left as is")
            else:
                report.message = ("no rollback steps, no pre-migration backup"
                                  + (" and no revert log" if kubo is not None else "")
                                  + ": nothing reverted")
            if reverted and not report.performed:
                report.message = (f"the failed step reverted itself ({reverted}); "
                                  + report.message.replace("nothing reverted",
                                                           "nothing else reverted"))
            if report.performed and kubo is not None and report.method != "revert_log" \
                    and kubo.restore_version():
                report.message += f"; Kubo repo version back at {kubo.spec.from_version}"
        except BaseException as exc:
            report.success = False
            report.message = f"rollback failed: {type(exc).__name__}: {exc}"
            result.error_log.append(report.message)
            result.exit_code = result.exit_code or getattr(exc, "exit_code", EXIT_ERROR)
            if isinstance(exc, KeyboardInterrupt):
                raise
            return report
        if partial and not report.performed:
            report.message += ("; the failed step was replacing records in place: its "
                               "journal is kept, fix the cause and re-run with --resume to "
                               "finish it")
            if journal is not None and journal.exists:
                journal.append({"t": "rolled_back", "method": "none",
                                "message": report.message})
            log.warning("rollback: %s", report.message)
            return report
        if stamp_path is not None:
            report.stamp_removed = remove_stamp(stamp_path)
            if report.stamp_removed and not report.performed:
                report.message += "; version stamp removed"
        if journal is not None:
            if journal.exists:
                journal.append({"t": "rolled_back", "method": report.method,
                                "message": report.message})
            journal.retire("rolled-back")
            result.journal_path = None
        log.warning("rollback: %s", report.message)
        return report

    def _restore(self, backup: str, stores: _Stores) -> int:
        """Restore the source from its pre-migration archive. The archive is verified
        completely (deep) first; then restored into a staging store beside the source and
        swapped in only once that succeeded, so a failure at any point leaves the source
        exactly as it was. Stores that cannot be staged (no single path of a known layout,
        or not opened by this run) are emptied and restored in place, after the same
        verification."""
        from dsbackup.archive.verify import verify_archive

        left = "the source was left as it is"
        archive = Path(backup)
        if not archive.is_file():
            raise MigrationError(f"pre-migration archive {backup} is missing; {left}")
        check = verify_archive(archive, deep=True)
        if not check.ok:
            first = check.errors[0] if check.errors else "damaged"
            raise IntegrityError(f"pre-migration archive {backup} failed verification "
                                 f"({first}); {left}")
        src = stores.by_name[SOURCE]
        path = _store_path(src)
        if path is not None and getattr(src, "scheme", "") in _STAGEABLE and stores.owns(src):
            return self._restore_staged(archive, stores, src, path)
        return self._restore_in_place(archive, src)

    @staticmethod
    def _restore_staged(archive: Path, stores: _Stores, src: Any, path: Path) -> int:
        from dsbackup.engine.restore import restore_archive

        scheme, _loc, params = parse_uri(stores._uri_of[id(src)])
        params = dict(params)
        shard = getattr(src, "shard", None)
        if scheme == "flatfs" and shard is not None:
            params["shard"] = f"{shard.kind}/{shard.param}"  # the source's layout
        staging = path.with_name(f".{path.name}.dsmigrate-rollback-{os.getpid()}")
        sides = [staging.with_name(staging.name + s) for s in ("", "-wal", "-shm")]
        for p in sides:
            _remove_path(p)
        uri = f"{scheme}:{staging}" + (f"?{urlencode(params)}" if params else "")
        try:
            res = restore_archive(archive, uri)
            stores.swap_in(src, staging)
        except BaseException:
            for p in sides:
                _remove_path(p)
            raise
        return int(res.records_written)

    @staticmethod
    def _restore_in_place(archive: Path, source: Any) -> int:
        from dsbackup.engine.restore import restore_archive

        # the source must end up exactly as archived: empty it, then restore into it
        while True:
            keys: list[bytes] = []
            for ks, _ in source.scan_key_sizes(b"", None, max_records=10_000):
                keys = ks
                break
            if not keys:
                break
            with source.batch() as b:
                for k in keys:
                    b.delete(k)
        res = restore_archive(archive, source)
        source.sync("/")
        return int(res.records_written)

    def _record(self, result: MigrationResult) -> None:
        with self._lock:
            m = self._metrics
            m["migrations_total"] += 1
            if result.dry_run:
                m["dry_runs"] += 1
            if result.success:
                m["migrations_succeeded"] += 1
            else:
                m["migrations_failed"] += 1
            if result.rolled_back:
                m["rollbacks"] += 1
            records = result.statistics.get("total_records", 0)
            m["records_total"] += records
            m["bytes_total"] += result.statistics.get("total_bytes", 0)
            m["last_duration_s"] = result.duration_s
            m["last_records_per_s"] = (records / result.duration_s
                                       if result.duration_s > 0 else None)
            m["last_plan"] = result.plan_id
        result.statistics.setdefault("duration_s", result.duration_s)
        if result.duration_s > 0:
            result.statistics["records_per_s"] = \
                result.statistics.get("total_records", 0) / result.duration_s


class _StepFailed(Exception):
    """Carries the failed step's partial result up to the run loop (never escapes it)."""

    def __init__(self, result: StepResult, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.result = result
        self.cause = cause
        self.exit_code = getattr(cause, "exit_code", EXIT_ERROR)
