"""`dsbackup backup SOURCE ARCHIVE`: back up a datastore to an archive."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from dsbackup import BackupConfig
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
from dsbackup.errors import EXIT_WARNING, ConfigError

COMMAND = "backup"
# done and durable when run() returns (archive synced and renamed, workers and zygote
# stopped): the process ends without the interpreter's teardown (cli/main.py,
# _exit_without_teardown)
EXIT_WITHOUT_TEARDOWN = True
HELP = "back up a datastore (URI or path) to an archive"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="datastore: lmdb:PATH, flatfs:PATH, leveldb:PATH, sqlite:PATH, "
                   "kubo:PATH, helia:PATH, fsds:PATH or a path (detected)")
    p.add_argument("archive", help="archive to write: a path (.tar.gz), s3://BUCKET/KEY, or - "
                   "for standard output (docs/STORAGE.md)")
    p.add_argument("--level", type=int, default=None,
                   help="compression level: 0-9 for gzip, 1-19 for zstd (default 1)")
    p.add_argument("--codec", choices=("gzip", "zstd"), default="gzip",
                   help="chunk codec: gzip (default; any gzip reader) or zstd (faster restores, "
                        "smaller archives; format version 2, docs/FORMAT.md §11.6)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="mean records per chunk (default: auto, ~1 MiB chunks)")
    p.add_argument("--chunk-max-bytes", type=int, default=BackupConfig.chunk_max_bytes,
                   help="largest chunk payload in bytes (default 2 MiB)")
    p.add_argument("--workers", type=int, default=None, help="parallel workers (default: CPUs)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip keys matching GLOB (* within a segment, ** across); repeatable")
    p.add_argument("--include-metadata", action="store_true",
                   help="store a key catalog (key, size, value XXH3) for fast ls")
    p.add_argument("--timeout", type=float, default=None, help="give up after SECONDS")
    p.add_argument("--no-verify", action="store_true",
                   help="skip re-reading the archive's checksums before it is renamed into place")
    p.add_argument("--trust-parent", action="store_true",
                   help="incremental: do not re-read the parent members this backup refers to "
                        "before the rename (their index entries are still checked); for chains "
                        "verified on a schedule of their own")
    p.add_argument("--parent", default=None,
                   help="parent archive: make an incremental backup that references the "
                   "parent's unchanged chunks")
    add_parent_dir_option(p)
    p.add_argument("--no-trust-content-keys", action="store_true",
                   help="incremental: read /blocks values even when keys and sizes are "
                   "unchanged (default: a block's key is its hash, so it is not read)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a file already at ARCHIVE (default: refuse); an archive that "
                   "other archives use as their parent is never replaced")
    p.add_argument("--format", choices=("dsbackup", "go"), default="dsbackup",
                   help="archive format: dsbackup (default) or go, the format of the Go "
                   "tool's RestoreBackup (docs/GOFORMAT.md; --chunk-size is its ChunkSize, "
                   "default 1000)")
    p.add_argument("--skip-foreign", action="store_true",
                   help="back up a flatfs/helia/fsds store even when it holds files that are "
                   "not of its layout (they are counted and listed; exit 1)")
    p.add_argument("--paged-index", choices=("auto", "always", "never"), default="auto",
                   help="index pages (docs/FORMAT.md §11.3): auto = when the store's estimate "
                        "is over 4096 chunks (default)")
    p.add_argument("--resume", action="store_true",
                   help="continue the temporary file a killed backup left for ARCHIVE "
                   "(full backups, encrypted with the same key options or not; "
                   "docs/FORMAT.md §11.5); starts a new backup when there is none")
    p.add_argument("--datastore-only", action="store_true",
                   help="kubo: archive the datastore records only, not the node's own files "
                   "(config with its private key, version, datastore_spec, keystore/): a "
                   "format-1 archive as before")
    add_key_options(p, encrypt=True)
    add_json_flag(p)


@contextmanager
def prepare(args: argparse.Namespace) -> Iterator[None]:
    """Around the command, before any key is read or store opened: fork the scan workers'
    zygote from this process while it is still single-threaded (pipeline/zygote.py; it holds
    no key and no store), or boot their fork server; stop the zygote at the end."""
    from dsbackup import prestart_workers, stop_workers_zygote

    prestart_workers(args.source, workers=args.workers, incremental=args.parent is not None,
                     format=args.format, fork_zygote=True)
    try:
        yield
    finally:
        stop_workers_zygote()


def run(args: argparse.Namespace) -> int:
    if args.archive == "-" and args.json:
        raise ConfigError("--json writes to standard output, which holds the archive when "
                          "ARCHIVE is '-'; leave out --json")
    unanchored = warn_unanchored("--exclude", args.exclude)
    from dsbackup import BackupManager

    level = 1 if args.level is None else args.level
    cfg = BackupConfig(compression_level=level, codec=args.codec, chunk_size=args.chunk_size,
                       chunk_max_bytes=args.chunk_max_bytes, timeout=args.timeout,
                       verify_integrity=not args.no_verify, trust_parent=args.trust_parent,
                       include_metadata=args.include_metadata,
                       exclude_patterns=args.exclude, workers=args.workers,
                       trust_content_keys=not args.no_trust_content_keys,
                       overwrite=args.overwrite,
                       skip_foreign=args.skip_foreign,
                       datastore_only=args.datastore_only,
                       paged_index=args.paged_index, resume=args.resume,
                       encryption=args.encryption)
    mgr = BackupManager(cfg)
    with cancel_on_signals() as cancel, progress_bar(not args.json, "backup") as bar:
        meta = mgr.create_backup(args.source, args.archive, parent=args.parent, progress=bar,
                                 cancel=cancel, parent_dirs=args.parent_dir,
                                 format=args.format)
    s = meta.statistics
    if args.json:
        emit_json(COMMAND, {"ok": True, "backup": meta.to_json(), "warnings": s.incomplete})
    else:
        s = meta.statistics
        print(f"{meta.path}: {meta.total_keys} records, {human_bytes(meta.total_size)} -> "
              f"{human_bytes(meta.compressed_size)} (ratio {meta.compression_ratio:.2f}) in "
              f"{meta.chunks} chunks, {s.duration_s:.2f} s, "
              f"{human_bytes(s.throughput_bytes_s)}/s; fingerprint {meta.fingerprint}",
              file=sys.stderr)
        if s.skipped_keys:
            print(f"excluded {s.skipped_keys} records ({human_bytes(s.skipped_bytes)})",
                  file=sys.stderr)
        if meta.node:
            print(f"node: {meta.node.get('files')} files of the {meta.node.get('kind')} "
                  f"repository ({human_bytes(meta.node.get('bytes') or 0)}: config, version, "
                  "datastore_spec, keystore/ ...) in the archive (format version 2)",
                  file=sys.stderr)
        if meta.node_warning:  # not a problem of the backup: the exit code stays 0
            print(f"warning: {meta.node_warning}", file=sys.stderr)
        if s.temp_files:  # not records: the exit code stays 0
            print(f"{s.temp_files} temporary files of interrupted writes (the store's writer's "
                  "or a killed restore's) hold no records and were left out", file=sys.stderr)
        if s.incomplete:
            print(f"warning: not backed up: {s.foreign_files} foreign files, "
                  f"{s.unreadable_files} files that vanished or could not be read "
                  f"(first: {', '.join(s.skipped_files)})", file=sys.stderr)
    if args.exclude and not meta.statistics.skipped_keys and not unanchored:
        warn_matched_nothing("--exclude " + " ".join(args.exclude))
    return EXIT_WARNING if (unanchored or s.incomplete) else 0
