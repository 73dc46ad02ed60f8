"""`dsbackup restore ARCHIVE TARGET`: restore an archive into a datastore."""

from __future__ import annotations

import argparse
import sys

from dsbackup import restore_archive
from dsbackup.cli._common import (
    add_json_flag,
    add_parent_dir_option,
    cancel_on_signals,
    emit_json,
    human_bytes,
    progress_bar,
    warn_matched_nothing,
    warn_unanchored,
)
from dsbackup.cli._keys import add_key_options
from dsbackup.errors import EXIT_WARNING, TargetNotEmpty
from dsbackup.workers import effective_workers

COMMAND = "restore"
# done and durable when run() returns: the process ends without the interpreter's teardown
# (cli/main.py, _exit_without_teardown)
EXIT_WITHOUT_TEARDOWN = True
HELP = "restore an archive into a datastore (empty by default)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive")
    p.add_argument("target", help="datastore URI such as lmdb:PATH (created if missing), or "
                   "the path of an existing store (its kind is detected)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true",
                   help="restore into a non-empty target, replacing values (and, for a "
                   "kubo: target, the node's own files: config, keystore/ ...)")
    g.add_argument("--skip-existing", action="store_true",
                   help="restore into a non-empty target, keeping existing keys")
    p.add_argument("--prefix", default=None, help="restore only the children of this key")
    p.add_argument("--pattern", action="append", default=[], metavar="GLOB",
                   help="restore only keys matching GLOB; repeatable")
    p.add_argument("--workers", type=int, default=None)
    add_parent_dir_option(p)
    add_key_options(p)
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    mode = "overwrite" if args.overwrite else "skip_existing" if args.skip_existing else "empty"
    warn_unanchored("--pattern", args.pattern)
    # restore_archive itself, not BackupManager: the backup engine's imports (the pipeline,
    # multiprocessing, the writer) would cost a small restore a large share of its time; the
    # key is already in place (cli/main.py: _run_with_key)
    workers = effective_workers(args.workers)
    try:
        with cancel_on_signals() as cancel, progress_bar(not args.json, "restore") as bar:
            res = restore_archive(args.archive, args.target, workers=workers, mode=mode,
                                  prefix=args.prefix, pattern=args.pattern or None,
                                  progress=bar, cancel=cancel, parent_dirs=args.parent_dir)
    except TargetNotEmpty as exc:  # name the options, not the API's mode values
        raise TargetNotEmpty(f"{exc.target}: target datastore is not empty; restore into an "
                             "empty store, or give --overwrite or --skip-existing",
                             target=exc.target) from None
    if args.json:
        emit_json(COMMAND, {"ok": True, "restore": res.to_json()})
    else:
        extra = f", resumed at chunk {res.resumed_from_chunk}" if res.resumed_from_chunk else ""
        print(f"{res.target}: restored {res.records_written} records "
              f"({human_bytes(res.bytes_written)}) from {res.chunks} chunks in "
              f"{res.duration_s:.2f} s{extra}", file=sys.stderr)
        if res.records_skipped:
            print(f"kept {res.records_skipped} existing keys", file=sys.stderr)
        if res.node_files:
            print(f"node: wrote {res.node_files} of the node's own files (config, version, "
                  "datastore_spec, keystore/ ...)", file=sys.stderr)
        if res.node_note:
            print(f"note: {res.node_note}", file=sys.stderr)
    filtered = args.prefix is not None or args.pattern
    if (filtered and not res.records_written and not res.records_skipped
            and res.resumed_from_chunk is None):
        warn_matched_nothing(" ".join([f"--prefix {args.prefix}"] * (args.prefix is not None)
                                      + [f"--pattern {p}" for p in args.pattern]),
                            args.prefix if not args.pattern else None)
        return EXIT_WARNING
    return 0
