"""Archives as the Go tool (gosuda/boxo-starter-kit pkg/backup) writes them, for tests."""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
from pathlib import Path

Record = tuple[str, "bytes | None"]


def go_json(obj: object) -> bytes:
    """Go's json.Marshal: sorted map keys, no spaces, UTF-8 as is, HTML characters escaped."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text.encode("utf-8")


def go_chunk(records: dict[str, bytes | None]) -> bytes:
    """json.Marshal(map[string][]byte): []byte as padded standard base64, nil as null."""
    return go_json({k: None if v is None else base64.b64encode(v).decode() for k, v in
                    records.items()})


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar stream as Go's archive/tar writes it: ustar headers, mode 0644, regular files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_gz(path: Path, payload: bytes, level: int = 6) -> Path:
    with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0,
                                               compresslevel=level) as gz:
        gz.write(payload)
    return path


def go_archive(path: Path, records: list[Record], chunk_size: int,
               metadata: bool = True) -> list[tuple[str, bytes]]:
    """What BackupManager.CreateBackup writes for a query returning ``records`` in order."""
    members: list[tuple[str, bytes]] = []
    keys_processed = bytes_processed = bytes_json = 0
    pending: list[Record] = []

    def write_chunk() -> None:
        nonlocal keys_processed, bytes_processed, bytes_json
        data: dict[str, bytes | None] = {}
        for key, value in pending:
            data[key] = value
            keys_processed += 1
            bytes_processed += len(value or b"")
        body = go_chunk(data)
        members.append((f"chunk_{keys_processed // chunk_size}.chunk", body))
        bytes_json += len(body)
        pending.clear()

    for record in records:
        pending.append(record)
        if len(pending) >= chunk_size:
            write_chunk()
    if pending:
        write_chunk()
    if metadata:
        members.append(("metadata.json", go_json({
            "version": "1.0", "timestamp": "2024-05-01T12:00:00.123456789+02:00",
            "total_keys": keys_processed, "total_size": bytes_processed,
            "compression": "gzip-6", "checksum": "",
            "config": {"CompressionLevel": 6, "ChunkSize": chunk_size,
                       "Timeout": 1800000000000, "VerifyIntegrity": True,
                       "IncludeMetadata": True, "ExcludePatterns": ["/local/", "/temp/"]},
            "statistics": {"duration": 1042, "keys_processed": keys_processed,
                           "bytes_processed": bytes_processed, "bytes_compressed": bytes_json,
                           "compression_ratio": 0, "error_count": 0, "skipped_keys": 0},
            "datastore_info": {"type": "*sync.MutexDatastore"},
        })))
    write_gz(path, tar_bytes(members))
    return members
