"""`dsbackup ls ARCHIVE`: list the keys an archive holds."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator

from dsbackup import ArchiveReader, NodeFile, iter_listing, prefix_bounds
from dsbackup.cli._common import (
    JSON_SCHEMA_VERSION,
    add_json_flag,
    add_parent_dir_option,
    escape_key,
    show_key,
    warn_matched_nothing,
)
from dsbackup.cli._keys import add_key_options
from dsbackup.errors import EXIT_WARNING

Row = tuple[bytes, int, "int | None"]

COMMAND = "ls"
HELP = "list an archive's keys (uses the key catalog when the archive has one)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive")
    p.add_argument("--prefix", default=None, help="only the children of this key")
    p.add_argument("-l", "--long", action="store_true", help="show value sizes (and digests)")
    add_parent_dir_option(p)
    add_key_options(p)
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from dsbackup import is_go_archive

    start, end = prefix_bounds(args.prefix)
    out = sys.stdout
    go = is_go_archive(args.archive)  # a Go-tool archive (docs/GOFORMAT.md)
    with (contextlib.nullcontext() if go
          else ArchiveReader(args.archive, parent_dirs=args.parent_dir)) as r:
        if r is None:
            from dsbackup import list_go

            rows = list_go(args.archive, start, end)
        else:
            chain = r.open_parents()
            if chain is not None:
                chain.require_catalogs()  # fail before the first line is printed, not halfway
            rows = iter_listing(r, start, end)
        # the node's own files (a whole node's archive), before the keys; not with --prefix
        node = r.node_files() if r is not None and args.prefix is None else []
        rows = _counted(rows, seen := [0])
        if args.json:
            # JSON lines: a header object, then one object per key (streams for huge archives)
            out.write(json.dumps({"schema": JSON_SCHEMA_VERSION, "command": COMMAND,
                                  "archive": args.archive, "prefix": args.prefix,
                                  "format": "go" if go else "dsbackup"}) + "\n")
            for f in node:
                out.write(json.dumps({"node": show_key(f.path), "kind": "directory" if f.is_dir
                                      else "file", "size": len(f.data),
                                      "mode": f"{f.mode:04o}"}) + "\n")
            for k, size, x in rows:
                row = {"key": show_key(k), "size": size}
                if x is not None:
                    row["xxh3"] = f"{x:016x}"
                out.write(json.dumps(row) + "\n")
        elif args.long:
            for f in node:
                out.write(f"{len(f.data):>12}  {f.mode:04o}  node:{_node_name(f)}\n")
            for k, size, x in rows:
                digest = f"  {x:016x}" if x is not None else ""
                out.write(f"{size:>12}{digest}  {escape_key(k)}\n")
        else:  # keys are untrusted: control characters escaped (docs/CLI.md)
            for f in node:
                out.write(f"node:{_node_name(f)}\n")
            for k, _size, _x in rows:
                out.write(escape_key(k) + "\n")
    if args.prefix is not None and not seen[0]:
        warn_matched_nothing(f"--prefix {args.prefix}", args.prefix)
        return EXIT_WARNING
    return 0


def _node_name(f: NodeFile) -> str:
    """A node file's path as ls shows it: escaped like keys, directories ending in `/`."""
    return escape_key(f.path) + ("/" if f.is_dir else "")


def _counted(rows: Iterator[Row], seen: list[int]) -> Iterator[Row]:
    """The rows, noting in seen[0] whether there was one (a prefix that matches nothing)."""
    for row in rows:
        seen[0] = 1
        yield row
