"""`dsbackup verify ARCHIVE`: check an archive (exit code 3 when damaged)."""

from __future__ import annotations

import argparse
import sys

from dsbackup import VerifyReport, verify_archive
from dsbackup.cli._common import (
    add_json_flag,
    add_parent_dir_option,
    emit_json,
    escape_key,
    escape_text,
    fraction,
    human_bytes,
)
from dsbackup.cli._keys import add_key_options
from dsbackup.errors import EXIT_ERROR, EXIT_INTEGRITY
from dsbackup.workers import effective_workers

COMMAND = "verify"
# done and durable when run() returns: the process ends without the interpreter's teardown
# (cli/main.py, _exit_without_teardown)
EXIT_WITHOUT_TEARDOWN = True
HELP = "verify an archive: quick (checksums), deep (default: inflate and parse) or sampled"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true",
                   help="structure and member checksums only (no inflate)")
    g.add_argument("--sample", type=fraction, default=None, metavar="FRACTION",
                   help="quick check of everything, deep check of a random fraction of chunks")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--check-blocks", action="store_true",
                   help="deep: also re-hash /blocks/<multihash> values against their keys "
                   "(sha2-256)")
    add_parent_dir_option(p)
    add_key_options(p)
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from dsbackup import is_go_archive

    go = is_go_archive(args.archive)
    if go:  # a Go-tool archive: always deep (it has no member checksums to check quickly)
        from dsbackup import verify_go

        report = verify_go(args.archive)
    else:
        # verify_archive itself, not BackupManager: see cli/restore.py (start-up)
        report = verify_archive(args.archive, deep=not args.quick, sample=args.sample,
                                threads=effective_workers(args.workers),
                                parent_dirs=args.parent_dir, check_blocks=args.check_blocks)
    if args.json:
        emit_json(COMMAND, {**report.to_json(), "format": "go" if go else "dsbackup"})
    else:
        if report.ok:
            rate = report.bytes_checked / report.duration_s if report.duration_s else 0
            print(f"{args.archive}: OK ({report.mode}): {report.checked_chunks} chunks, "
                  f"{report.records} records checked, {human_bytes(report.bytes_checked)} in "
                  f"{report.duration_s:.2f} s ({human_bytes(rate)}/s)", file=sys.stderr)
            if report.node_files is not None:
                print(f"  node member: {report.node_files} entries parsed "
                      f"({human_bytes(report.node_bytes)})", file=sys.stderr)
            elif report.node_bytes:
                print(f"  node member: checksums OK ({human_bytes(report.node_bytes)})",
                      file=sys.stderr)
            if report.parents:
                print(f"  {report.referenced_chunks} chunks read from parents: "
                      f"{', '.join(report.parents)}", file=sys.stderr)
            if args.check_blocks:
                print(f"  {report.blocks_checked} blocks re-hashed against their keys",
                      file=sys.stderr)
                for reason, n in sorted(report.blocks_unchecked.items()):
                    print(f"  {n} not checked: {reason} (e.g. "
                          f"{report.blocks_unchecked_examples.get(reason, '?')})",
                          file=sys.stderr)
        elif _parent_missing_only(report):
            print(f"{args.archive}: not checked, a parent archive is missing or unusable "
                  f"(nothing found damaged): {report.errors[0]}", file=sys.stderr)
        else:
            print(f"{args.archive}: DAMAGED: {len(report.errors)} problem(s)", file=sys.stderr)
            for e in report.errors[:50]:
                print(f"  {escape_text(e, backslash=False)}", file=sys.stderr)
            for r in report.bad_ranges[:50]:
                if "first_key" in r:
                    print(f"  chunk {r['chunk']}: keys {escape_key(r['first_key'])} .. "
                          f"{escape_key(r['last_key'])} ({r['records']} records) affected",
                          file=sys.stderr)
    if _parent_missing_only(report):
        return EXIT_ERROR  # a parent archive is missing: nothing found damaged
    return 0 if report.ok else EXIT_INTEGRITY


def _parent_missing_only(report: VerifyReport) -> bool:
    return report.bad_parts == ["parent"] and len(report.errors) == 1
