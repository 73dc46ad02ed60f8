"""Result objects of the managers: BackupMetadata, BackupStatistics, RestoreResult, Progress."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from dsbackup._plain import Plain, asdict


def per_second(amount: float, seconds: float) -> float:
    """A rate: `amount` per second, 0.0 before any time has passed."""
    return amount / seconds if seconds > 0 else 0.0


class Progress(Plain):
    """Passed to progress callbacks. Totals are estimates from the store (may be None)."""

    __slots__ = ("records", "bytes", "chunks", "elapsed_s", "total_records", "total_bytes")
    records: int
    bytes: int
    chunks: int
    elapsed_s: float
    total_records: int | None
    total_bytes: int | None

    def __init__(self, records: int, bytes: int, chunks: int, elapsed_s: float,
                 total_records: int | None = None, total_bytes: int | None = None) -> None:
        self.records = records
        self.bytes = bytes
        self.chunks = chunks
        self.elapsed_s = elapsed_s
        self.total_records = total_records
        self.total_bytes = total_bytes

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return per_second(self.bytes, self.elapsed_s)

    @property
    def records_rate(self) -> float:
        return per_second(self.records, self.elapsed_s)

    @property
    def eta(self) -> float | None:
        """Seconds left, estimated from the store's size, or None when unknown."""
        if not self.total_bytes or self.rate <= 0:
            return None
        return max(0.0, (self.total_bytes - self.bytes) / self.rate)


class BackupStatistics(Plain):
    __slots__ = ("duration_s", "keys_processed", "bytes_processed", "bytes_compressed",
                 "errors", "skipped_keys", "skipped_bytes", "workers", "mode", "cpu_s",
                 "foreign_files", "unreadable_files", "skipped_files", "temp_files")
    duration_s: float
    keys_processed: int
    bytes_processed: int
    bytes_compressed: int
    errors: int
    skipped_keys: int
    skipped_bytes: int
    workers: int
    mode: str
    cpu_s: float  # CPU time of every process of the backup
    # files of a file-per-key store (flatfs, helia, fsds) that are not in the archive:
    # foreign ones (not of the layout; backed up only with skip_foreign) and ones that
    # vanished or failed to read during the scan; the first few paths of each
    foreign_files: int
    unreadable_files: int
    skipped_files: list[str]
    # the store's writers' own temp files of interrupted writes (Helia's steno .X.tmp,
    # go-ds-flatfs's put-N, a killed restore's): no records, not backed up, not a warning
    temp_files: int

    def __init__(self, duration_s: float = 0.0, keys_processed: int = 0,
                 bytes_processed: int = 0, bytes_compressed: int = 0, errors: int = 0,
                 skipped_keys: int = 0, skipped_bytes: int = 0, workers: int = 1,
                 mode: str = "central", cpu_s: float = 0.0, foreign_files: int = 0,
                 unreadable_files: int = 0, skipped_files: list[str] | None = None,
                 temp_files: int = 0) -> None:
        self.duration_s = duration_s
        self.keys_processed = keys_processed
        self.bytes_processed = bytes_processed
        self.bytes_compressed = bytes_compressed
        self.errors = errors
        self.skipped_keys = skipped_keys
        self.skipped_bytes = skipped_bytes
        self.workers = workers
        self.mode = mode
        self.cpu_s = cpu_s
        self.foreign_files = foreign_files
        self.unreadable_files = unreadable_files
        self.skipped_files = [] if skipped_files is None else skipped_files
        self.temp_files = temp_files

    @property
    def incomplete(self) -> bool:
        """Files of the store were left out (the CLI exits 1)."""
        return bool(self.foreign_files or self.unreadable_files)

    @property
    def throughput_bytes_s(self) -> float:
        return per_second(self.bytes_processed, self.duration_s)

    @property
    def records_per_s(self) -> float:
        return per_second(self.keys_processed, self.duration_s)


class BackupMetadata(Plain):
    """What a backup archive holds, from its manifest and summary."""

    __slots__ = ("path", "version", "timestamp", "total_keys", "total_size", "compressed_size",
                 "chunks", "fingerprint", "compression", "config", "datastore", "statistics",
                 "parent", "tool", "node", "node_warning")
    path: str
    version: int
    timestamp: datetime
    total_keys: int
    total_size: int
    compressed_size: int
    chunks: int
    fingerprint: str
    compression: dict[str, Any]
    config: dict[str, Any]
    datastore: dict[str, Any]
    statistics: BackupStatistics
    parent: str | None
    tool: str
    # a whole node's archive (format version 2): the manifest's `node` object (kind, files,
    # bytes, private_key) and, when it holds a private key, the warning to show
    node: dict[str, Any] | None
    node_warning: str | None

    def __init__(self, path: str, version: int, timestamp: datetime, total_keys: int,
                 total_size: int, compressed_size: int, chunks: int, fingerprint: str,
                 compression: dict[str, Any], config: dict[str, Any],
                 datastore: dict[str, Any], statistics: BackupStatistics | None = None,
                 parent: str | None = None, tool: str = "", node: dict[str, Any] | None = None,
                 node_warning: str | None = None) -> None:
        self.path = path
        self.version = version
        self.timestamp = timestamp
        self.total_keys = total_keys
        self.total_size = total_size
        self.compressed_size = compressed_size
        self.chunks = chunks
        self.fingerprint = fingerprint
        self.compression = compression
        self.config = config
        self.datastore = datastore
        self.statistics = BackupStatistics() if statistics is None else statistics
        self.parent = parent
        self.tool = tool
        self.node = node
        self.node_warning = node_warning

    @property
    def compression_ratio(self) -> float:
        """Raw key+value bytes per archive byte (higher is better)."""
        return self.total_size / self.compressed_size if self.compressed_size else 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["timestamp"] = self.timestamp.astimezone(timezone.utc).isoformat()
        d["compression_ratio"] = round(self.compression_ratio, 4)
        d["statistics"]["throughput_bytes_s"] = round(self.statistics.throughput_bytes_s, 1)
        d["statistics"]["records_per_s"] = round(self.statistics.records_per_s, 1)
        return d


def parse_timestamp(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


class RestoreResult(Plain):
    __slots__ = ("archive", "target", "records_written", "records_skipped", "bytes_written",
                 "chunks", "chunks_total", "duration_s", "resumed_from_chunk", "fingerprint",
                 "node_files", "node_note")
    archive: str
    target: str
    records_written: int
    records_skipped: int
    bytes_written: int
    chunks: int
    chunks_total: int
    duration_s: float
    resumed_from_chunk: int | None
    fingerprint: str
    node_files: int  # the node's own files written (kubo: targets, docs/CLI.md)
    node_note: str | None  # why the archive's node files were not written, if not; or,
    # written by --overwrite, the private keys of the target set aside (restore_node)

    def __init__(self, archive: str, target: str, records_written: int = 0,
                 records_skipped: int = 0, bytes_written: int = 0, chunks: int = 0,
                 chunks_total: int = 0, duration_s: float = 0.0,
                 resumed_from_chunk: int | None = None, fingerprint: str = "",
                 node_files: int = 0, node_note: str | None = None) -> None:
        self.archive = archive
        self.target = target
        self.records_written = records_written
        self.records_skipped = records_skipped
        self.bytes_written = bytes_written
        self.chunks = chunks
        self.chunks_total = chunks_total
        self.duration_s = duration_s
        self.resumed_from_chunk = resumed_from_chunk
        self.fingerprint = fingerprint
        self.node_files = node_files
        self.node_note = node_note

    @property
    def throughput_bytes_s(self) -> float:
        return per_second(self.bytes_written, self.duration_s)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["throughput_bytes_s"] = round(self.throughput_bytes_s, 1)
        return d
