"""What a run settles before it writes anything: the plan loaded and validated, where its
journal and version stamp live, whether the stamp says it already ran, the Kubo side of the
plan, the write locks of the stores, and whether the source is opened writable."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from dsbackup.datastores import parse_uri
from dsbackup.engine.restore_journal import refuse_unfinished_restore
from dsbackup.engine.targetlock import TargetLock
from dsbackup.errors import DsBackupError, MigrationError
from dsbackup.migration.config import MigrationConfig
from dsbackup.migration.journal import Journal, read_stamp
from dsbackup.migration.kuborepo import KuboRun
from dsbackup.migration.plan import SOURCE, TARGET, MigrationPlan, MigrationType, load_plan
from dsbackup.migration.result import MigrationResult, StepResult
from dsbackup.migration.stores import StoreLike, refs_written, same_uri, store_path

__all__ = ["already_done", "kubo_run", "load", "lock_stores", "refuse_foreign_files",
           "refuse_overlap", "refuse_unread_source", "state_files", "writes_source"]


def load(plan: MigrationPlan | str | os.PathLike[str]) -> MigrationPlan:
    """A validated plan: the object itself, or read from a TOML/JSON/YAML file."""
    if isinstance(plan, MigrationPlan):
        plan.validate()
        return plan
    return load_plan(plan)


def state_files(plan: MigrationPlan, cfg: MigrationConfig, dst: Any
                ) -> tuple[Journal | None, Path | None]:
    """The run's journal and version stamp: in ``state_dir``, else beside the target
    (``<target>.dsmigrate/``); ``(None, None)`` for a target without a filesystem path."""
    if cfg.state_dir is not None:
        state = Path(cfg.state_dir)
    else:
        p = store_path(dst)
        if p is None:
            return None, None
        state = p.with_name(p.name + ".dsmigrate")
    return Journal(state / f"{plan.id}.journal"), state / f"{plan.id}.version"


def already_done(plan: MigrationPlan, cfg: MigrationConfig, target: Any,
                 result: MigrationResult) -> bool:
    """True (and ``result`` filled in) when the target's stamp says this plan ran; checked
    before the stores are even opened, so a re-run touches nothing."""
    _, stamp_path = state_files(plan, cfg, target)
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


def kubo_run(plan: MigrationPlan, cfg: MigrationConfig, source: Any, target: Any
             ) -> KuboRun | None:
    """The Kubo side of a plan with a ``[kubo]`` table (version file, revert log)."""
    if plan.kubo is None:
        return None
    journal, _ = state_files(plan, cfg, target)
    return KuboRun(plan.kubo, plan, source, target,
                   journal.path.parent if journal is not None else None)


def lock_stores(plan: MigrationPlan, cfg: MigrationConfig, source: StoreLike,
                target: StoreLike, rollback: bool = False) -> ExitStack:
    """Take the write lock (targetlock.py) of every store this run may write: the
    target, the source when a step, a rollback step or the pre-migration archive's
    restore may write it, and any other store a step writes; a source it only reads is
    held as a backup holds its source (shared): a restore or migration into it is refused
    while it is read, and it is not read while one runs or after one was killed (half a
    store, copied and called done). A store another process writes gives LockedError
    (exit 4) before anything is opened."""
    refs = refs_written(plan.steps + plan.rollback)
    stack = ExitStack()
    what = f"migration {plan.id}" + (" rollback" if rollback else "")
    try:
        stack.enter_context(TargetLock(target, what))
        if rollback or cfg.backup_before or SOURCE in refs:
            stack.enter_context(TargetLock(source, what, create_parent=False))
        else:
            stack.enter_context(TargetLock(source, what, shared=True,
                                           then="migrate it when that has finished"))
            refuse_unfinished_restore(store_path(source), "migrate it")
        for ref in sorted(refs - {SOURCE, TARGET}):
            stack.enter_context(TargetLock(ref, what, create_parent=False))
    except BaseException:
        stack.close()
        raise
    return stack


def writes_source(plan: MigrationPlan, cfg: MigrationConfig, source: Any,
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
    if isinstance(target, (str, os.PathLike)) and same_uri(os.fspath(source),
                                                           os.fspath(target)):
        return True
    src_uri = os.fspath(source)
    for step in plan.steps + plan.rollback:
        refs = [step.target] + ([step.source] if step.kind is MigrationType.MOVE else [])
        for ref in refs:
            if ref == SOURCE or (ref not in (SOURCE, TARGET) and same_uri(ref, src_uri)):
                return True
    return False


def refuse_unread_source(plan: MigrationPlan, source: Any, target: Any) -> None:
    """A plan none of whose steps reads or writes the source, run between two stores into a
    new target (or a Kubo plan, which makes a new repo from the source's files), would ignore
    the source: `migrate kubo-11-to-12 kubo:OLD kubo:NEW` made NEW an empty repo at version
    12 (OLD's config and identity, none of its blocks) and said ok. Refused (exit 2) before
    anything is opened. (An in-place plan on an existing target, the source given only
    because the command takes one, runs as before.)"""
    if source is target:
        return
    if isinstance(source, (str, os.PathLike)) and isinstance(target, (str, os.PathLike)):
        src, dst = os.fspath(source), os.fspath(target)
        if same_uri(src, dst):
            return
        for step in plan.steps:
            for ref in (step.source, step.target):
                if ref == SOURCE or (ref != TARGET and same_uri(ref, src)):
                    return
        where = store_path(dst)
        if plan.kubo is None and (where is None or where.exists()):
            return
        raise MigrationError(
            f"plan {plan.id!r} never reads its SOURCE: every step works on TARGET alone, so "
            f"{src} would be ignored and {dst} left without its records; run it in place "
            f"(the same store as SOURCE and TARGET"
            + (f", or migrate --kubo {plan.kubo.from_version}-to-{plan.kubo.to_version} REPO"
               if plan.kubo is not None else "") + "), or use a plan that copies SOURCE")


def _footprint(uri: str, spec_repo: Path | None = None) -> list[tuple[Path, str]]:
    """The directories (or file) a store URI writes, each with what it is: the store's path
    and, for a Kubo repo, every directory its ``datastore_spec`` mounts (``spec_repo``: the
    repo whose spec a new repo will be given)."""
    from dsbackup.datastores.kubo import SPEC_FILE, mount_dirs

    scheme, path, _ = parse_uri(uri)
    if scheme == "memory" or not path:
        return []
    root = Path(os.path.realpath(path))
    out = [(root, uri)]
    if scheme == "kubo" or (scheme is None and (root / SPEC_FILE).is_file()):
        spec_from = spec_repo if spec_repo is not None and not (root / SPEC_FILE).is_file() \
            else None
        for d in mount_dirs(path, spec_from):
            out.append((Path(os.path.realpath(d)), f"a mount of {uri}'s datastore_spec"
                        + (", copied from the source" if spec_from else "")))
    return out


def refuse_overlap(plan: MigrationPlan, source: Any, target: Any) -> None:
    """Between two stores, refuse (exit 2, before anything is opened) a target that lies in
    the source, holds it, or shares a directory with it (a Kubo repo's mounts included): the
    run would write into the source, which a copy leaves untouched. `migrate PLAN kubo:OLD
    kubo:NEW` with OLD's blocks at an absolute path (another disk) gave NEW OLD's
    datastore_spec, so NEW's /blocks was OLD's store: the copy wrote its re-keyed blocks into
    the source (and a rollback's cleanup would have deleted from it)."""
    if not (isinstance(source, (str, os.PathLike)) and isinstance(target, (str, os.PathLike))):
        return
    src, dst = os.fspath(source), os.fspath(target)
    if same_uri(src, dst) or not refs_written(plan.steps + plan.rollback):
        return
    from dsbackup.migration.kuborepo import kubo_repo_path

    src_fp = _footprint(src)
    dst_fp = _footprint(dst, kubo_repo_path(src))
    for t, t_what in dst_fp:
        for s, s_what in src_fp:
            if t == s or s in t.parents or t in s.parents:
                how = (f"both use {t} ({t_what}; {s_what})" if t == s
                       else f"{t} ({t_what}) lies inside {s} ({s_what})" if s in t.parents
                       else f"{t} ({t_what}) holds {s} ({s_what})")
                raise MigrationError(
                    f"target {dst} overlaps source {src}: {how}; a migration between two "
                    f"stores would write into its source. Give a target apart from the "
                    f"source (a Kubo repo's datastore_spec paths included: a new repo gets "
                    f"the source's), or run in place (the same store as SOURCE and TARGET); "
                    f"nothing was changed")


def refuse_foreign_files(plan: MigrationPlan, by_name: dict[str, Any], name: str) -> None:
    """Files of a file-per-key store a step reads (flatfs, a kubo:/helia: node's blocks,
    fsds) that are not of its layout (wrong shard, invalid name, no ``.data``, nested
    directories) hold records no scan lists: a migration would leave them behind and say ok
    (a Helia blockstore given as ``flatfs:P?shard=next-to-last/2``: 0 records copied, exit
    0), as a backup would not (it refuses them). Refused, MigrationError (exit 2) naming
    them and the likely right URI, before any step runs (the source before the target is
    even opened). `name`: the store of the run to check (``source`` or ``target``), when a
    step reads it."""
    ds = by_name.get(name)
    if ds is None:
        return
    names = {name}
    if name == TARGET and by_name.get(SOURCE) is ds:  # in place
        if any(step.source == SOURCE for step in plan.steps):
            return  # checked as the source
        names.add(SOURCE)
    if any(step.source in names for step in plan.steps):
        fn = getattr(ds, "audit_files", None)
        audit = fn() if fn is not None else None
        if audit is not None and audit.count:
            raise MigrationError(audit.message(getattr(ds, "uri", name), "migrated")
                                 + "; nothing was changed (move them out of the store, or "
                                 "give the URI of its real layout)")
