"""`dsbackup prune DIR`: apply a retention policy (borg prune semantics) to the scheduled-backup
archives in a directory or under an S3 prefix (``s3://BUCKET/PREFIX/``), explaining each
decision."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dsbackup import directory_archives
from dsbackup.cli._common import add_json_flag, emit_json
from dsbackup.errors import EXIT_OK, EXIT_WARNING, ConfigError, DsBackupError
from dsbackup.scheduler import (
    RULES,
    RetentionItem,
    RetentionPolicy,
    forced_kept,
    get_zone,
    list_archives,
    parse_duration,
    plan_retention,
)
from dsbackup.storage import S3Location, abort_stale_uploads, as_location, delete, is_stream

COMMAND = "prune"
HELP = "delete old archives in a directory by retention rules (borg prune semantics)"

log = logging.getLogger(__name__)


def _location(value: str) -> Any:
    """as_location with its own message ('s3://: ... no bucket given'), not argparse's
    'invalid as_location value'."""
    try:
        return as_location(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", type=_location,
                   help="directory (or s3://BUCKET/PREFIX/) of <name>_<YYYYmmdd_HHMMSS>.tar.gz "
                        "archives")
    periods = {"hourly": "hours", "daily": "days", "weekly": "ISO weeks", "monthly": "months",
               "yearly": "years"}
    for rule in RULES:
        p.add_argument(f"--keep-{rule}", type=int, default=0, metavar="N",
                       help=f"keep the newest archive of each of the last N {periods[rule]} "
                            "that have archives (-1: all)" if rule != "last"
                       else "keep the N newest archives")
    p.add_argument("--max-age", default=None, metavar="DURATION",
                   help="prune archives older than this (e.g. 90d, 1y, 12w)")
    p.add_argument("--name", default=None, help="only archives of this schedule name")
    p.add_argument("--time-zone", default=None,
                   help="zone whose calendar defines days and weeks (default: local time)")
    p.add_argument("--state", type=Path, default=None,
                   help="scheduler state directory: its verified flags protect the newest "
                        "verified archive")
    p.add_argument("--assume-no-uploads", action="store_true",
                   help="s3:// only: when the prefix's unfinished uploads cannot be listed (no "
                        "s3:ListBucketMultipartUploads permission), prune as if no "
                        "backup were being uploaded there (default: keep every archive)")
    p.add_argument("--dry-run", "-n", action="store_true", help="delete nothing")
    add_json_flag(p)


def _verified_paths(state_dir: Path | None) -> set[str]:
    if state_dir is None:
        return set()
    from dsbackup.scheduler import StateStore

    out = set()
    for st in StateStore(state_dir).load().values():
        out.update(os.path.basename(a.path) for a in st.archives or [] if a.verified)
    return out


def run(args: argparse.Namespace) -> int:
    policy = RetentionPolicy(**{f"keep_{r}": getattr(args, f"keep_{r}") for r in RULES},
                             max_age=parse_duration(args.max_age))
    if policy.is_empty:
        raise ConfigError("give at least one of --keep-last, --keep-hourly, --keep-daily, "
                          "--keep-weekly, --keep-monthly, --keep-yearly, --max-age")
    if is_stream(args.directory):
        raise ConfigError("prune needs a directory or an s3:// prefix, not '-'")
    if isinstance(args.directory, S3Location):
        args.directory = S3Location(args.directory.bucket, args.directory.prefix)
    elif not args.directory.is_dir():
        raise ConfigError(f"{args.directory}: not a directory")
    if args.state is not None and not args.state.is_dir():
        # without its verified flags the newest verified archive would lose its protection
        raise ConfigError(f"--state {args.state}: no such state directory")
    tz = get_zone(args.time_zone) if args.time_zone else None
    from dsbackup.scheduler import ManagerRunner

    runner = ManagerRunner()
    verified = _verified_paths(args.state)
    groups: dict[str, list[RetentionItem]] = defaultdict(list)
    paths: dict[str, Path] = {}
    skipped: list[dict[str, str]] = []
    found = list_archives(args.directory, args.name)
    if not found:
        what = f"named {args.name!r} " if args.name else ""
        log.warning("%s: no archives %s(<name>_<YYYYmmdd_HHMMSS>.tar.gz): nothing to prune",
                    args.directory, what)
    for path, name, _ in found:
        try:
            info = runner.inspect(path)
        except DsBackupError as exc:
            skipped.append({"path": str(path), "error": str(exc)})
            log.warning("%s: skipped, cannot read its manifest: %s", path, exc)
            continue
        groups[name].append(RetentionItem(path.name, info.created, path.name in verified))
        paths[path.name] = path
    now = datetime.now(timezone.utc)
    report: dict[str, Any] = {"ok": True, "dry_run": args.dry_run, "groups": {},
                              "skipped": skipped, "deleted": [], "errors": []}
    # every ancestor of a kept archive stays, whatever its name (one code path with the
    # scheduler: dsbackup.scheduler.pruning)
    unseen: list[str] = []  # a prefix whose uploads cannot be listed: all of it is kept
    results = plan_retention(groups, directory_archives(args.directory), policy, now, tz,
                             unseen=unseen, assume_no_uploads=args.assume_no_uploads)
    if unseen:
        report["live_writes_error"] = "; ".join(unseen)
    for name, result in sorted(results.items()):
        report["groups"][name] = [d.to_json() for d in result.decisions()]
        for d in result.decisions():
            if not args.json:
                what = (f"keep   (rule {d.rule} #{d.number}: {d.reason})" if d.keep
                        else f"prune  ({d.reason})")
                shown = d.timestamp.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")
                print(f"{'would ' if args.dry_run and not d.keep else ''}{what:<60} "
                      f"{d.id}  {shown}")
            if not d.keep and not args.dry_run:
                try:
                    delete(paths[d.id])  # a file, or an object (one DELETE)
                    report["deleted"].append(str(paths[d.id]))
                except (OSError, DsBackupError) as exc:
                    report["errors"].append(f"{paths[d.id]}: {exc}")
                    log.error("%s: cannot delete: %s", paths[d.id], exc)
    # archives kept only because an archive's parent cannot be read: said, not silent
    forced = forced_kept(results.values())
    report["maybe_parent"] = [{"archive": a, "kept": n} for a, n in sorted(forced.items())]
    for a, n in sorted(forced.items()):
        log.warning("%d archive(s) kept that the rules would prune (rule maybe-parent): the "
                    "parent of %s cannot be read (encrypted, prune has no key; or a newer "
                    "format; or still being written), and any of them may be it", n, a)
    stale_failed = False
    if isinstance(args.directory, S3Location):  # killed backups' unfinished uploads
        try:
            report["stale_uploads"] = [u.to_json() for u in
                                       abort_stale_uploads(args.directory,
                                                           dry_run=args.dry_run)]
        except DsBackupError as exc:
            stale_failed = True
            report["stale_uploads_error"] = str(exc)
            log.warning("%s: could not check for stale multipart uploads: %s",
                        args.directory, exc)
    report["ok"] = not report["errors"]
    if args.json:
        emit_json(COMMAND, report)
    elif skipped:
        print(f"dsbackup: {len(skipped)} archive(s) skipped (unreadable): "
              + json.dumps([s["path"] for s in skipped]), file=sys.stderr)
    if report["errors"]:
        return 2
    return (EXIT_WARNING if skipped or stale_failed or unseen or (args.name and not found)
            else EXIT_OK)
