"""`dsbackup inspect ARCHIVE`: what an archive holds (reads no chunk)."""

from __future__ import annotations

import argparse

from dsbackup import ArchiveReader, BackupManager
from dsbackup.cli._common import add_json_flag, emit_json, escape_text, human_bytes
from dsbackup.cli._keys import add_key_options

COMMAND = "inspect"
HELP = "show an archive's metadata: source, settings, totals, fingerprint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive")
    add_key_options(p)
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from dsbackup import is_go_archive

    go = is_go_archive(args.archive)
    encrypted = False
    index = None  # the paged index's shape (docs/FORMAT.md §11.3), read from its root only
    resumed: list[dict] = []  # a resumed backup's epochs (docs/FORMAT.md §11.5)
    if go:
        from dsbackup import inspect_go

        meta = inspect_go(args.archive)
    else:
        with ArchiveReader(args.archive, locked_ok=True) as r:
            if r.locked:
                return _show_locked(args, r)
            encrypted = r.encrypted
            resumed = resumed_epochs(r.summary)
            if r.paged:
                index = {"paged": True, "pages": r.index.page_count,
                         "page_entries": r.index.page_entries}
        meta = BackupManager().inspect(args.archive)
    if args.json:
        emit_json(COMMAND, {"ok": True, "backup": meta.to_json(),
                            "format": "go" if go else "dsbackup", "encrypted": encrypted,
                            "index": index or {"paged": False}, "resumed": resumed})
        return 0
    s = meta.statistics
    rows = [
        ("archive", meta.path),
        ("format", "go (docs/GOFORMAT.md)" if go else "dsbackup"),
        ("created", meta.timestamp.isoformat()),
        ("tool", meta.tool),
        ("source", f"{meta.datastore.get('uri')} ({meta.datastore.get('backend')})"),
        ("records", f"{meta.total_keys}"),
        ("data", human_bytes(meta.total_size)),
        ("archive size", f"{human_bytes(meta.compressed_size)} "
                         f"(ratio {meta.compression_ratio:.2f})"),
        ("chunks", f"{meta.chunks}"),
        ("compression", f"{meta.compression.get('codec', 'gzip')} level "
                        f"{meta.compression.get('level')} ({meta.compression.get('engine')})"),
        ("chunk size", f"{meta.config.get('chunk_size')} records (Go ChunkSize)" if go else
         f"{meta.config.get('chunk_size')} records mean, max "
         f"{human_bytes(meta.config.get('chunk_max_bytes') or 0)}"),
        ("excluded", f"{s.skipped_keys} records"),
        ("duration", f"{s.duration_s:.2f} s ({s.mode}, {s.workers} workers)"),
        ("fingerprint" if not go else "checksum",
         meta.fingerprint or ("none (the Go tool writes none)" if go else "")),
        ("parent", "none (Go archive)" if go else _parent_line(args.archive, meta.parent)),
    ]
    if not go:
        rows.insert(2, ("format version", str(meta.version)))
        rows.insert(3, ("encrypted", "yes (AES-256-GCM, docs/ENCRYPTION.md)" if encrypted
                        else "no"))
        rows.insert(4, ("index", f"paged: {index['pages']} pages of up to "
                                 f"{index['page_entries']} chunks" if index else "single"))
        if resumed:
            rows.append(("resumed", "; ".join(
                f"epoch {e['epoch']} from chunk {e['from_seq']}"
                + ("" if e["snapshot"] is None else f" (new snapshot: LMDB txn {e['snapshot']})")
                for e in resumed)))
        n = meta.node
        rows.append(("node", "none (datastore records only)" if not n else
                     f"{n['files']} files, {n['directories']} directories, "
                     f"{human_bytes(n['bytes'])} of the {n['kind']} repository; private key: "
                     f"{'yes' if n['private_key'] else 'no'}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:  # manifest strings are untrusted: control characters escaped
        print(f"{k:<{width}}  {escape_text(v)}")
    if meta.node_warning:
        print(f"warning: {meta.node_warning}")
    return 0


def resumed_epochs(summary: dict) -> list[dict]:
    """The summary's `resumed` list (docs/FORMAT.md §11.5), its well-formed entries only."""
    out = []
    raw = summary.get("resumed")
    for e in raw if isinstance(raw, list) else []:
        if (isinstance(e, dict) and isinstance(e.get("epoch"), int)
                and isinstance(e.get("from_seq"), int)
                and (e.get("snapshot") is None or isinstance(e.get("snapshot"), int))):
            out.append({"epoch": e["epoch"], "from_seq": e["from_seq"],
                        "snapshot": e.get("snapshot")})
    return out


def _show_locked(args: argparse.Namespace, r: ArchiveReader) -> int:
    """An encrypted archive without a key: what its plaintext header shows (§11.4)."""
    from dsbackup import MISSING_KEY

    h = r.key_header or {}
    kdf = h.get("kdf") or {}
    public = {"encrypted": True, "format_version": r.version, "size": r.size,
              "chunks": r.trailer.chunk_count, "cipher": h.get("cipher"),
              "archive_id": h.get("archive_id"), "kdf": kdf}
    if args.json:
        emit_json(COMMAND, {"ok": True, "format": "dsbackup", "locked": True,
                            "header": public, "message": MISSING_KEY})
        return 0
    params = ", ".join(f"{k}={v}" for k, v in sorted(kdf.items()) if k != "name")
    rows = [("archive", str(r.path)), ("format", "dsbackup"),
            ("format version", str(r.version)),
            ("encrypted", f"yes: {h.get('cipher')}; the rest needs the key"),
            ("archive id", str(h.get("archive_id"))),
            ("key from", f"{kdf.get('name')}" + (f" ({params})" if params else "")),
            ("chunks", str(r.trailer.chunk_count)),
            ("archive size", human_bytes(r.size))]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {escape_text(v)}")
    print(f"note: {MISSING_KEY} to see the manifest and summary")
    return 0


def _parent_line(path: str, fingerprint: str | None) -> str:
    if fingerprint is None:
        return "none (full backup)"
    with ArchiveReader(path) as r:
        p = r.manifest.get("parent") or {}
        stored = r.chunk_count - int(r.summary.get("referenced_chunks", 0))
    name = p.get("name", "") if isinstance(p, dict) else ""
    return f"{name} (fingerprint {fingerprint}); {stored} chunks stored here, the rest in the parent chain"
