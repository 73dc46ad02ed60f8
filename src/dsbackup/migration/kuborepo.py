"""Kubo repository migrations as Kubo sees them: ``REPO/version``, the revert log, new repos.

A plan with a ``[kubo]`` table (:class:`~dsbackup.migration.plan.KuboSpec`) run on a
``kubo:`` store:

- refuses, before any store is opened (opening LevelDB for writing rewrites its files), when
  the repo's ``version`` file is not ``from_version``;
- writes ``to_version`` into ``REPO/version`` after every step succeeded (temp file, fsync,
  rename, fsync of the directory), the format fs-repo-migrations writes (``"12\\n"``);
- with ``revert_log``, writes the file Kubo's own fs-repo-11-to-12 migration writes before it
  re-keys anything: ``REPO/11-to-12-cids.txt``, one line per re-keyed record, the record's
  old datastore key as go-datastore prints it (``/blocks/AFYBEI...``) followed by ``\\n``,
  opened for appending (a re-run appends, as Kubo's does; lines already present are not
  written again). Kubo's revert reads each line, re-derives the multihash key and copies the
  block back; so does :func:`revert_from_log`;
- next to the journal, ``<plan id>.kubo-kept`` (JSON) lists the new keys that already existed
  before the re-keying (a CIDv1 block whose multihash is also stored as a CIDv0 block) and
  whether the run created the revert log: the facts the revert log cannot carry, needed to
  restore the repo exactly;
- a rollback (ours: on failure or ``--rollback``) reads the revert log: every listed key gets
  its block back (from the multihash key, or from the staging namespace of an interrupted
  run), multihash keys the migration created are removed (all are kept when no
  ``.kubo-kept`` record exists, e.g. for a log Kubo wrote: that is what Kubo's revert does),
  the log is removed when this run created it, else renamed ``.reverted`` as Kubo's revert
  does, and ``version`` goes back to ``from_version``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsbackup.datastores import parse_uri
from dsbackup.errors import MigrationError, NotFound
from dsbackup.keys import key_str
from dsbackup.migration.plan import KuboSpec, MigrationPlan, MigrationStep, MigrationType
from dsbackup.migration.runtime import TMP_END, TMP_ROOT, CompiledTransform
from dsbackup.migration.transforms import cid_key_to_multihash_key
from dsbackup.storage.tempfiles import fsync_dir

__all__ = ["KuboRun", "RevertReport", "kubo_repo_path", "read_repo_version",
           "write_repo_version", "revert_from_log", "copy_repo_files"]

log = logging.getLogger(__name__)

VERSION_FILE = "version"
_BATCH = 1000


def kubo_repo_path(store: Any) -> Path | None:
    """The repo directory of a ``kubo:`` URI (or a bare path holding ``datastore_spec``) or
    of an opened ``KuboDatastore``; ``None`` for anything else."""
    repo = getattr(store, "repo", None)
    if repo is not None and getattr(store, "scheme", "") == "kubo":
        return Path(repo).absolute()
    if not isinstance(store, (str, os.PathLike)):
        return None
    scheme, path, _ = parse_uri(os.fspath(store))
    if scheme == "kubo" or (scheme is None and (Path(path) / "datastore_spec").is_file()):
        return Path(path).absolute()
    return None


def read_repo_version(repo: Path) -> str | None:
    """``REPO/version`` without surrounding white space (as Kubo reads it); None if absent."""
    try:
        return (repo / VERSION_FILE).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise MigrationError(f"{repo / VERSION_FILE}: unreadable: {exc}") from None


def write_repo_version(repo: Path, version: str) -> None:
    """Replace ``REPO/version`` atomically with ``"<version>\\n"`` (mode kept, else 0644)."""
    path = repo / VERSION_FILE
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=".version-", dir=repo)
    try:
        os.write(fd, f"{version}\n".encode("ascii"))
        os.fchmod(fd, mode)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(repo, best_effort=True)


def _is_empty_or_missing(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


_NEW_REPO_ADVICE = "make the new repo yourself (ipfs init) and copy into it"


def _source_node_files(source_repo: Path) -> list[Any]:
    """The source repo's node files (docs/DATASTORES.md, "What a kubo backup holds"):
    everything but its datastores, ``repo.lock``, ``api``, ``gateway`` and temp files."""
    from dsbackup.engine.nodefiles import collect_kubo
    from dsbackup.errors import BackupError

    try:
        return collect_kubo(source_repo, advice=_NEW_REPO_ADVICE).files
    except BackupError as exc:
        raise MigrationError(f"cannot give a new Kubo repo the files of {source_repo}: "
                             f"{exc}; nothing was changed") from None


def _holds_only_copies(source_repo: Path, target_repo: Path) -> bool:
    """True when `target_repo` holds nothing but copies (same bytes) of the source repo's
    node files that :func:`copy_repo_files` makes, some possibly missing, and its temp
    files: what a run killed while making the new repo, before its journal began, leaves."""
    if not target_repo.is_dir() or target_repo.is_symlink():
        return False
    try:
        files = {os.fsdecode(f.path): f for f in _source_node_files(source_repo)}
    except MigrationError:
        return False
    for dirpath, dirnames, filenames in os.walk(target_repo):
        rel = Path(dirpath).relative_to(target_repo)
        for name in dirnames:
            f = files.get(str(rel / name))
            if f is None or not f.is_dir:
                return False
        for name in filenames:
            if ".dsbackup-tmp-" in name:
                continue  # write_node_files' temp file, cut short
            f = files.get(str(rel / name))
            try:
                if f is None or f.is_dir or (target_repo / rel / name).read_bytes() != f.data:
                    return False
            except OSError:
                return False
    return True


def copy_repo_files(source_repo: Path, target_repo: Path) -> list[str]:
    """Give a missing or empty target repo the source repo's node files — ``config``,
    ``datastore_spec``, ``version``, ``keystore/``, ``swarm.key`` and whatever else Kubo or
    its plugins keep there, as a backup of ``kubo:`` takes them (modes and mtimes kept, each
    written to a temp file, fsynced and renamed); returns the top-level names copied."""
    from dsbackup.engine.restore_node import write_node_files

    if not (source_repo / "datastore_spec").is_file():
        raise MigrationError(f"{source_repo}: not a Kubo repo (datastore_spec missing)")
    files = _source_node_files(source_repo)
    target_repo.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_node_files(target_repo, files)
    return sorted({os.fsdecode(f.path.split(b"/")[0]) for f in files})


def _mh_key(old: bytes) -> bytes | None:
    """The multihash key a CIDv1 key becomes (what Kubo's revert derives from a log line)."""
    new = cid_key_to_multihash_key(old)
    return new if new != old else None


class RevertLog:
    """``REPO/<name>``: the old keys of re-keyed records, one per line, appended."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def keys(self) -> list[bytes]:
        """The listed keys, first occurrence order, without duplicates or empty lines."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        seen: dict[bytes, None] = {}
        for line in data.split(b"\n"):
            line = line.strip()
            if line:
                seen.setdefault(line, None)
        return list(seen)

    def append(self, keys: list[bytes]) -> int:
        """Append the keys not listed yet (fsynced); returns how many were written."""
        known = set(self.keys())
        new = [k for k in dict.fromkeys(keys) if k not in known]
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if new:
                os.write(fd, b"".join(k + b"\n" for k in new))
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent, best_effort=True)
        return len(new)


def _flatfs_dirs(ds: Any) -> dict[str, list[str]]:
    """The shard directories of each flatfs mount of a ``kubo:`` store (before a re-keying
    creates new ones), so a rollback can remove the empty ones it leaves behind."""
    out: dict[str, list[str]] = {}
    for m in getattr(ds, "mounts", []):
        child = m.datastore
        if getattr(child, "scheme", "") == "flatfs":
            root = Path(child.path)
            out[str(root)] = sorted(e.name for e in os.scandir(root)
                                    if e.is_dir(follow_symlinks=False))
    return out


def _remove_new_empty_dirs(before: dict[str, list[str]]) -> None:
    for root, names in before.items():
        keep = set(names)
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for e in entries:
            if e.name in keep or not e.is_dir(follow_symlinks=False):
                continue
            try:
                os.rmdir(e.path)  # only empty ones: a non-empty directory stays
            except OSError:
                continue
        fsync_dir(root, best_effort=True)


def _write_record(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(json.dumps(doc, indent=1).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent, best_effort=True)


@dataclass
class RevertReport:
    restored: int = 0       # old keys written back
    present: int = 0        # old keys that were still there
    missing: list[bytes] = field(default_factory=list)  # no value found anywhere
    removed: int = 0        # multihash keys the migration had created, deleted
    kept: int = 0           # multihash keys left in place
    kept_unknown: bool = False  # no .kubo-kept record: every multihash key was kept
    temp_removed: int = 0


def _temp_keys(ds: Any) -> list[bytes]:
    """Every key in the staging namespace of in-place steps."""
    return [k for keys, _ in ds.scan_key_sizes(TMP_ROOT, TMP_END, max_records=_BATCH)
            for k in keys]


def _lookup(ds: Any, key: bytes) -> bytes | None:
    try:
        return bytes(ds.get(key))
    except NotFound:
        return None


def revert_from_log(ds: Any, keys: list[bytes], kept: set[bytes] | None) -> RevertReport:
    """Undo a re-keying on the opened store ``ds``: each old key in ``keys`` gets its value
    back; multihash keys not in ``kept`` are deleted (none when ``kept`` is None); staged
    temp keys of an interrupted in-place step are removed last."""
    rep = RevertReport(kept_unknown=kept is None)
    pairs = []
    for old in keys:
        new = _mh_key(old)
        if new is None:
            raise MigrationError(f"revert log: {key_str(old)} is not a CIDv1 key")
        pairs.append((old, new))
    staged = _temp_keys(ds)
    staged_by_new: dict[bytes, bytes] = {}
    for t in staged:  # /_DSMIGRATE_S0_blocks/CIQ... holds what becomes /blocks/CIQ...
        rest = t[len(TMP_ROOT):]
        staged_by_new.setdefault(b"/" + rest[rest.find(b"_") + 1:], t)
    for i in range(0, len(pairs), _BATCH):
        chunk = pairs[i:i + _BATCH]
        put_k: list[bytes] = []
        put_v: list[bytes] = []
        for old, new in chunk:
            if ds.has(old):
                rep.present += 1
                continue
            value = _lookup(ds, new)
            if value is None and new in staged_by_new:
                value = _lookup(ds, staged_by_new[new])
            if value is None:
                rep.missing.append(old)
                continue
            put_k.append(old)
            put_v.append(value)
        if put_k:
            ds.put_many(put_k, put_v)
            rep.restored += len(put_k)
    ds.sync("/")
    news = list(dict.fromkeys(new for _, new in pairs))
    if kept is None:
        rep.kept = sum(1 for n in news if ds.has(n))
    else:
        gone = [n for n in news if n not in kept and ds.has(n)]
        rep.kept = sum(1 for n in news if n in kept)
        for i in range(0, len(gone), _BATCH):
            with ds.batch() as b:
                for k in gone[i:i + _BATCH]:
                    b.delete(k)
        rep.removed = len(gone)
    for i in range(0, len(staged), _BATCH):
        with ds.batch() as b:
            for k in staged[i:i + _BATCH]:
                b.delete(k)
    rep.temp_removed = len(staged)
    ds.sync("/")
    return rep


class KuboRun:
    """The Kubo side of one run of a plan with a ``[kubo]`` table."""

    def __init__(self, spec: KuboSpec, plan: MigrationPlan, source: Any, target: Any,
                 state_dir: Path | None) -> None:
        self.spec = spec
        self.plan = plan
        self.source_repo = kubo_repo_path(source)
        self.target_repo = kubo_repo_path(target)
        if self.source_repo is None and self.target_repo is None:
            raise MigrationError(f"plan {plan.id!r} declares Kubo repo versions "
                                 f"({spec.from_version} -> {spec.to_version}) but neither "
                                 f"source nor target is a kubo: repository")
        self.in_place = (self.source_repo is not None and self.source_repo == self.target_repo)
        self.kept_path = (state_dir / f"{plan.id}.kubo-kept") if state_dir else None
        # this plan made the target repo (from the source's files): a run that failed once
        # the copy began (a full disk) leaves it at from_version, and a rerun goes on in it
        self.new_path = (state_dir / f"{plan.id}.kubo-new") if state_dir else None
        self.created_files: list[str] = []
        self._new_repo: bool | None = None  # a new target repo to make: was it missing?

    @property
    def log(self) -> RevertLog | None:
        if not self.spec.revert_log or self.target_repo is None or not self.in_place:
            return None
        return RevertLog(self.target_repo / self.spec.revert_log)

    def preflight(self, *, started: bool, dry_run: bool) -> None:
        """Refuse a repo at the wrong version (before anything is opened or written); give a
        missing or empty target repo the source repo's files (not in a dry run).

        In place, the repo must be at ``from_version``. Between two stores, a ``kubo:``
        source must be at ``from_version`` (it is only read), and a ``kubo:`` target must be
        new (missing or empty: it gets the source repo's files) or already at
        ``to_version``: an existing repo at an older version would be stamped
        ``to_version`` while its own records were never migrated. A resumed run (``started``)
        also accepts ``to_version`` in place and ``from_version`` in a target it created."""
        want, to = self.spec.from_version, self.spec.to_version
        if self.source_repo is not None:
            repo = self.source_repo
            have = read_repo_version(repo)
            if not (have == want or (started and self.in_place and have == to)):
                if have is None:
                    raise MigrationError(
                        f"{repo}: no {VERSION_FILE} file: not a Kubo repo, or not initialised "
                        f"(plan {self.plan.id!r} migrates Kubo repo version {want} to {to}); "
                        f"nothing was changed")
                hint = " (already migrated?)" if have == to else ""
                raise MigrationError(f"{repo}/{VERSION_FILE} is {have!r}, plan "
                                     f"{self.plan.id!r} migrates Kubo repo version {want} to "
                                     f"{to}{hint}; nothing was changed")
        tgt = self.target_repo
        if tgt is None or self.in_place:
            pass
        elif _is_empty_or_missing(tgt) or (
                not started and self.source_repo is not None
                and _holds_only_copies(self.source_repo, tgt)):
            # (the second: the files an earlier run copied before it was killed)
            if self.source_repo is None:
                raise MigrationError(f"{tgt}: a new Kubo repo takes its config, datastore_spec "
                                     f"and version from a kubo: source; create it with "
                                     f"'ipfs init' first; nothing was changed")
            if not dry_run:
                self._new_repo = not tgt.exists()  # made by make_new_repo, under the locks
        else:
            tv = read_repo_version(tgt)
            if not (tv == to or (started and tv == want)
                    or (tv == want and self._made_here(tgt))):
                raise MigrationError(f"{tgt}/{VERSION_FILE} is {tv!r}: a copy goes into a new "
                                     f"(missing or empty) Kubo repo or one already at version "
                                     f"{to} (the target's own records are not migrated); "
                                     f"nothing was changed")
        if not started and not dry_run and self.kept_path is not None:
            self.kept_path.unlink(missing_ok=True)  # a record of an earlier, finished run

    def _made_here(self, tgt: Path) -> bool:
        """True when this plan made `tgt` from the source repo (our ``.kubo-new`` record)."""
        if self.new_path is None or self.source_repo is None:
            return False
        try:
            doc = json.loads(self.new_path.read_text())
        except (OSError, ValueError):
            return False
        return (isinstance(doc, dict) and doc.get("source") == str(self.source_repo)
                and doc.get("target") == str(tgt))

    def make_new_repo(self) -> None:
        """Give the new target repo (found by :meth:`preflight`) the source repo's files;
        called once the run holds its stores' locks, before any store is opened."""
        tgt = self.target_repo
        if self._new_repo is None or tgt is None or self.source_repo is None:
            return
        if self.new_path is not None:
            _write_record(self.new_path, {"source": str(self.source_repo),
                                          "target": str(tgt)})
        try:
            self.created_files = copy_repo_files(self.source_repo, tgt)
        except OSError as exc:
            self.undo_new_repo()
            raise MigrationError(f"{tgt}: cannot create the new Kubo repo's files: "
                                 f"{exc}") from None
        log.info("new Kubo repo %s: copied %s from %s", tgt, ", ".join(self.created_files),
                 self.source_repo)

    def undo_new_repo(self) -> None:
        """A run that made the new target repo and failed before its journal began (the
        source's daemon running, a store that does not open): the target goes back to what
        it was (missing, or an empty directory), so a later run takes it as new again."""
        tgt = self.target_repo
        if self._new_repo is None or tgt is None:
            return
        if self._new_repo:
            shutil.rmtree(tgt, ignore_errors=True)
        else:
            for e in list(os.scandir(tgt)):
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    os.unlink(e.path)
        fsync_dir(tgt if tgt.exists() else tgt.parent, best_effort=True)
        self.created_files = []
        self._new_repo = None
        if self.new_path is not None:
            self.new_path.unlink(missing_ok=True)
            try:
                self.new_path.parent.rmdir()  # made for the record alone
            except OSError:
                pass

    def check_still_migrated(self, stamp: str | None) -> None:
        """Our stamp says done: refuse when the repo's version says otherwise (Kubo's own
        revert undid the run, or the version file was changed by hand)."""
        repo = self.target_repo
        if repo is None:
            return
        have = read_repo_version(repo)
        if have != self.spec.to_version:
            raise MigrationError(f"stamp {stamp} says plan {self.plan.id!r} ran, but "
                                 f"{repo}/{VERSION_FILE} is {have!r}, not "
                                 f"{self.spec.to_version!r} (reverted by Kubo?); run "
                                 f"--rollback to clear dsbackup's state, then migrate again")

    # -- before an in-place re-keying step: the revert log, written before any write -------
    def before_step(self, step: MigrationStep, src: Any, dst: Any, batch_size: int) -> int:
        """Write the revert log for an in-place transform step that changes keys on the
        repo; returns the number of keys logged (0 when nothing to do or already done)."""
        rlog = self.log
        if (rlog is None or src is not dst or step.kind is not MigrationType.TRANSFORM
                or getattr(dst, "scheme", "") != "kubo" or self.kept_path is None):
            return 0
        xf = CompiledTransform.build(step.transform, f"{step.id}.transform")
        if xf.key.identity:
            return 0
        if self.kept_path.exists():
            return 0  # this run's log is complete (a resumed run)
        filt = (step.filters.compile(f"{step.id}.filters") if step.filters else None)
        start, end = (filt.start, filt.end) if filt else (b"", None)
        old_keys: list[bytes] = []
        kept: list[bytes] = []
        batches: Iterator[tuple[list[bytes], Any]]
        if filt is not None and filt.needs_values:
            batches = dst.scan_batches(start, end, max_records=batch_size)
        else:
            batches = ((ks, None) for ks, _ in dst.scan_key_sizes(start, end,
                                                                   max_records=batch_size))
        for keys, values in batches:
            vals = values if values is not None else [b""] * len(keys)
            keep = filt.keep if filt is not None else None
            keys = [k for k, v in zip(keys, vals) if not (TMP_ROOT <= k < TMP_END)
                    and (keep is None or keep(k, v))]
            if not keys:
                continue
            new = xf.key.apply_batch(keys)
            for k, nk in zip(keys, new):
                if k != nk:
                    old_keys.append(k)
                    if dst.has(nk):
                        kept.append(nk)
        created = not rlog.path.exists()
        n = rlog.append(old_keys)
        _write_record(self.kept_path, {
            "revert_log": str(rlog.path), "log_created": created, "logged": len(old_keys),
            "flatfs_dirs": _flatfs_dirs(dst),
            "kept": sorted(k.decode("ascii", "backslashreplace") for k in set(kept))})
        log.info("revert log %s: %d key(s) listed (%d new), %d multihash key(s) existed "
                 "before", rlog.path, len(old_keys), n, len(set(kept)))
        return len(old_keys)

    # -- after every step --------------------------------------------------------------------
    def finish(self) -> Path | None:
        """Write ``to_version`` into the target repo; returns the version file written."""
        if self.target_repo is None:
            return None
        write_repo_version(self.target_repo, self.spec.to_version)
        if self.new_path is not None:
            self.new_path.unlink(missing_ok=True)  # migrated: the stamp speaks from now on
        return self.target_repo / VERSION_FILE

    # -- rollback -----------------------------------------------------------------------------
    def can_revert(self) -> bool:
        rlog = self.log
        return rlog is not None and rlog.path.exists()

    def _record(self) -> dict[str, Any] | None:
        if self.kept_path is None:
            return None
        try:
            doc = json.loads(self.kept_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise MigrationError(f"{self.kept_path}: unreadable: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("kept"), list):
            raise MigrationError(f"{self.kept_path}: not a dsbackup re-keying record")
        return doc

    def revert(self, ds: Any) -> tuple[RevertReport, str]:
        """Undo the re-keying from the revert log, retire the log, restore the version."""
        rlog = self.log
        assert rlog is not None
        keys = rlog.keys()
        record = self._record()
        kept = ({str(k).encode("ascii") for k in record["kept"]} if record is not None
                else None)
        rep = revert_from_log(ds, keys, kept)
        if rep.missing:
            raise MigrationError(f"revert log {rlog.path}: {len(rep.missing)} listed key(s) "
                                 f"have no block anywhere in the repo (first: "
                                 f"{key_str(rep.missing[0])}); version left as it is")
        if record is not None and record.get("log_created"):
            rlog.path.unlink()  # this run created it: the repo ends as it was
        else:  # as Kubo's revert does
            os.replace(rlog.path, rlog.path.with_name(rlog.path.name + ".reverted"))
        fsync_dir(rlog.path.parent, best_effort=True)
        if record is not None and isinstance(record.get("flatfs_dirs"), dict):
            _remove_new_empty_dirs(record["flatfs_dirs"])
        if self.kept_path is not None:
            self.kept_path.unlink(missing_ok=True)
        self.restore_version()
        msg = (f"reverted {len(keys)} key(s) from {rlog.path} ({rep.restored} restored, "
               f"{rep.present} still present); {rep.removed} multihash key(s) removed"
               + (f", {rep.kept} kept (no record of which existed before the migration, "
                  f"as Kubo's revert keeps them)" if rep.kept_unknown and rep.kept
                  else f", {rep.kept} kept (existed before)" if rep.kept else "")
               + (f"; {rep.temp_removed} staged temp key(s) removed" if rep.temp_removed
                  else "")
               + f"; {self.target_repo}/{VERSION_FILE} is {self.spec.from_version}")
        return rep, msg

    def restore_version(self) -> bool:
        """Put ``from_version`` back when the target repo says ``to_version``."""
        if self.target_repo is None:
            return False
        if read_repo_version(self.target_repo) == self.spec.to_version:
            write_repo_version(self.target_repo, self.spec.from_version)
            return True
        return False
