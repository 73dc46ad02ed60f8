"""``dsbackup migrate PLAN SOURCE TARGET``: run (or dry-run, resume, roll back) a migration plan.

PLAN is a plan file or the name of a shipped plan (``kubo-11-to-12``);
``dsbackup migrate --kubo 11-to-12 REPO`` runs the shipped Kubo plan in place on ``kubo:REPO``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dsbackup.errors import EXIT_OK

COMMAND = "migrate"
HELP = "run a migration plan (TOML/JSON/YAML) from SOURCE to TARGET"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", metavar="PLAN",
                        help="plan file (.toml, .json, .yaml) or a shipped plan's name "
                             "(kubo-11-to-12); with --kubo: the Kubo repo directory")
    parser.add_argument("source", metavar="SOURCE", nargs="?",
                        help="source datastore URI or path")
    parser.add_argument("target", metavar="TARGET", nargs="?",
                        help="target datastore URI or path (may equal SOURCE for in-place "
                             "steps)")
    parser.add_argument("--kubo", metavar="FROM-TO", default=None,
                        help="run the shipped Kubo repo migration (e.g. 11-to-12) in place "
                             "on the repo given as the only argument")
    parser.add_argument("--dry-run", action="store_true",
                        help="read everything, write nothing; report what would change")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted migration from its journal (without "
                             "it, an unfinished journal is an error)")
    parser.add_argument("--rollback", action="store_true",
                        help="undo the migration: run the plan's rollback steps or restore "
                             "its pre-migration backup, remove its version stamp")
    parser.add_argument("--backup-before", action="store_true",
                        help="archive the source before migrating (overrides the plan)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="records per batch (overrides the plan)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="stop after this long, keeping the journal for --resume")
    parser.add_argument("--state-dir", default=None, metavar="DIR",
                        help="journal and version stamp directory (default: "
                             "TARGET.dsmigrate/ next to the target)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the comparison after copy/move/transform steps")
    parser.add_argument("--json", action="store_true",
                        help="print the result as JSON on stdout (schema 1)")


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[Any], None] | None]:
    """A rich progress bar per step on a terminal; nothing otherwise."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    bars: dict[int, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.fields[records]:>12,} records"),
                  TextColumn("{task.fields[rate]:>10,.0f} rec/s"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        def update(ev: Any) -> None:
            task = bars.get(ev.step_index)
            desc = f"[{ev.step_index + 1}/{ev.steps_total}] {ev.step_id} ({ev.phase})"
            if task is None:
                task = progress.add_task(desc, total=None, records=0, rate=0.0)
                bars[ev.step_index] = task
            progress.update(task, description=desc, records=ev.records, rate=ev.rate)
        yield update


def _summary(result: Any, rollback: bool = False) -> str:
    lines = []
    verb = "rollback of" if rollback else "dry run of" if result.dry_run else "migration"
    state = ("ok" if result.success else "nothing to roll back"
             if result.error == "NothingToRollBack" else f"FAILED ({result.error})")
    lines.append(f"{verb} {result.plan_id} v{result.plan_version}: {state} in "
                 f"{result.duration_s:.2f}s")
    if result.message:
        lines.append(f"  {result.message}")
    for s in result.steps:
        lines.append(f"  {s.step_id:<20} {s.type:<9} {s.status:<9} records={s.records} "
                     f"written={s.written} deleted={s.deleted} changed={s.changed} "
                     f"skipped={s.skipped} errors={s.errors}"
                     + (f"  {s.message}" if s.message else ""))
        for entry in s.sample:
            new = f" -> {entry['new_key']}" if "new_key" in entry else ""
            size = (f" ({entry['size']} -> {entry['new_size']} bytes)"
                    if "new_size" in entry else f" ({entry['size']} bytes)")
            lines.append(f"      {entry['action']}: {entry['key']}{new}{size}")
    if result.backup_path:
        lines.append(f"  pre-migration backup: {result.backup_path}")
    for msg in result.error_log[:10]:
        lines.append(f"  error: {msg}")
    if result.rollback is not None:
        rb = result.rollback
        lines.append(f"  rollback ({rb.method}): {rb.message}")
    return "\n".join(lines)


def _plan_and_stores(args: argparse.Namespace) -> tuple[Any, str, str]:
    import os

    from dsbackup.errors import ConfigError
    from dsbackup.migration import SHIPPED, load_plan, shipped_plan

    if args.kubo is not None:
        if args.source is not None:
            raise ConfigError("with --kubo give only the repo: dsbackup migrate --kubo "
                              f"{args.kubo} REPO")
        repo = args.plan
        repo = repo[len("kubo:"):] if repo.startswith("kubo:") else repo
        return shipped_plan(f"kubo-{args.kubo}"), f"kubo:{repo}", f"kubo:{repo}"
    if args.source is None or args.target is None:
        raise ConfigError("give PLAN SOURCE TARGET (or --kubo FROM-TO REPO)")
    if args.plan in SHIPPED and not os.path.exists(args.plan):
        return shipped_plan(args.plan), args.source, args.target
    return load_plan(args.plan), args.source, args.target


def run(args: argparse.Namespace) -> int:
    from dsbackup.migration import MigrationConfig, MigrationManager

    plan, source, target = _plan_and_stores(args)
    overrides: dict[str, Any] = {}
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.timeout is not None:
        overrides["timeout"] = args.timeout
    if args.backup_before:
        overrides["backup_before"] = True
    if args.no_verify:
        overrides["verify_migration"] = False
    if args.state_dir is not None:
        overrides["state_dir"] = args.state_dir
    # the plan's own [config] first, then the command line on top
    cfg = MigrationConfig(dry_run=args.dry_run, resume=args.resume)
    cfg = cfg.with_overrides(plan.config).with_overrides(overrides)
    plan.config = {}
    manager = MigrationManager(cfg)
    if args.rollback:
        if args.dry_run:
            from dsbackup.errors import ConfigError

            raise ConfigError("--rollback cannot be combined with --dry-run")
        result = manager.rollback_migration(plan, source, target)
    else:
        show = sys.stderr.isatty() and not args.json
        with _progress_bar(show) as progress:
            result = manager.execute_migration(plan, source, target, progress=progress)
    if args.json:
        json.dump({"command": COMMAND, **result.to_dict()}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_summary(result, args.rollback), file=sys.stderr)
    if result.success:
        return EXIT_OK
    return result.exit_code or 2
