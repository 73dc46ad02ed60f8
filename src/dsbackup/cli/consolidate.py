"""`dsbackup consolidate ARCHIVE OUT`: rewrite an incremental archive as a full one."""

from __future__ import annotations

import argparse
import sys

from dsbackup import consolidate_archive
from dsbackup.cli._common import add_json_flag, add_parent_dir_option, emit_json, human_bytes
from dsbackup.cli._keys import add_key_options

COMMAND = "consolidate"
HELP = "rewrite an incremental archive (with its parent chain) into a self-contained archive"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", help="incremental archive")
    p.add_argument("out", help="archive to write (a full backup of the same state)")
    add_parent_dir_option(p, "where to look for parent archives besides ARCHIVE's directory; "
                          "repeatable")
    p.add_argument("--workers", type=int, default=None, help="checking threads")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a file already at OUT (never ARCHIVE or one of its parents, "
                   "nor an archive that others use as their parent)")
    add_key_options(p)
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from dsbackup import is_go_archive
    from dsbackup.errors import UnsupportedArchive

    if is_go_archive(args.archive):  # intact, not damaged: exit 2, not the reader's exit 3
        raise UnsupportedArchive(f"{args.archive}: an archive of the Go tool's format "
                                 "(docs/GOFORMAT.md); consolidate needs a dsbackup archive")
    w = consolidate_archive(args.archive, args.out, parent_dirs=args.parent_dir,
                            threads=args.workers, overwrite=args.overwrite)
    if args.json:
        emit_json(COMMAND, {"ok": True, "archive": str(w.path), "chunks": w.chunks,
                            "records": w.records, "size": w.size,
                            "fingerprint": w.fingerprint})
    else:
        print(f"{w.path}: {w.records} records in {w.chunks} chunks, {human_bytes(w.size)}; "
              f"fingerprint {w.fingerprint}", file=sys.stderr)
    return 0
