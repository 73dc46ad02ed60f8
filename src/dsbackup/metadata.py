"""Result objects of the managers: BackupMetadata, BackupStatistics, RestoreResult, Progress."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any


def per_second(amount: float, seconds: float) -> float:
    """A rate: `amount` per second, 0.0 before any time has passed."""
    return amount / seconds if seconds > 0 else 0.0


@dataclass
class Progress:
    """Passed to progress callbacks. Totals are estimates from the store (may be None)."""

    records: int
    bytes: int
    chunks: int
    elapsed_s: float
    total_records: int | None = None
    total_bytes: int | None = None

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


@dataclass
class BackupStatistics:
    duration_s: float = 0.0
    keys_processed: int = 0
    bytes_processed: int = 0
    bytes_compressed: int = 0
    errors: int = 0
    skipped_keys: int = 0
    skipped_bytes: int = 0
    workers: int = 1
    mode: str = "central"
    cpu_s: float = 0.0  # CPU time of every process of the backup
    # files of a file-per-key store (flatfs, helia, fsds) that are not in the archive:
    # foreign ones (not of the layout; backed up only with skip_foreign) and ones that
    # vanished or failed to read during the scan; the first few paths of each
    foreign_files: int = 0
    unreadable_files: int = 0
    skipped_files: list[str] = field(default_factory=list)
    # the store's writers' own temp files of interrupted writes (Helia's steno .X.tmp,
    # go-ds-flatfs's put-N, a killed restore's): no records, not backed up, not a warning
    temp_files: int = 0

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


@dataclass
class BackupMetadata:
    """What a backup archive holds, from its manifest and summary."""

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
    statistics: BackupStatistics = field(default_factory=BackupStatistics)
    parent: str | None = None
    tool: str = ""
    # a whole node's archive (format version 2): the manifest's `node` object (kind, files,
    # bytes, private_key) and, when it holds a private key, the warning to show
    node: dict[str, Any] | None = None
    node_warning: str | None = None

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


@dataclass
class RestoreResult:
    archive: str
    target: str
    records_written: int = 0
    records_skipped: int = 0
    bytes_written: int = 0
    chunks: int = 0
    chunks_total: int = 0
    duration_s: float = 0.0
    resumed_from_chunk: int | None = None
    fingerprint: str = ""
    node_files: int = 0  # the node's own files written (kubo: targets, docs/CLI.md)
    node_note: str | None = None  # why the archive's node files were not written, if not;
    # or, written by --overwrite, the private keys of the target set aside (restore_node)

    @property
    def throughput_bytes_s(self) -> float:
        return per_second(self.bytes_written, self.duration_s)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["throughput_bytes_s"] = round(self.throughput_bytes_s, 1)
        return d
