"""Backup settings (`BackupConfig`) with documented defaults."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from dsbackup import codec as codecs
from dsbackup._ext.compress import ENGINES
from dsbackup.errors import ConfigError
from dsbackup.patterns import key_matcher
from dsbackup.workers import MAX_WORKERS as MAX_WORKERS  # (re-exported: config_file, tests)
from dsbackup.workers import check_workers, effective_workers

DEFAULT_CHUNK_MAX_BYTES = 2 << 20
# records per chunk at most (`--chunk-size`): a chunk is bounded by chunk_max_bytes anyway, and
# the planner holds the mean in a C unsigned long
MAX_CHUNK_SIZE = 1 << 32
# With chunk_size=None ("auto") the mean chunk aims at this many payload bytes. Since
# incompressible segments are stored apart (docs/COMPRESSION.md), 1 MiB chunks compress as
# small as 256 KiB ones, and a quarter as many chunks cost a quarter of the per-chunk work of
# backup, restore and verify (docs/PERFORMANCE.md, "Measurements behind the code").
AUTO_CHUNK_TARGET_BYTES = 1 << 20


@dataclass
class BackupConfig:
    """How backups are made. Every field has a default that suits a large IPFS store.

    - ``compression_level`` 0-9 (default 1). Engines: 0 stored (no compression), 1-3 ISA-L
      igzip levels 1-3 (1 is the fastest real compression; ISA-L's level 0 is not used because
      it expands incompressible data), 4-9 zlib levels 4-9. See docs/COMPRESSION.md.
    - ``chunk_size``: the mean number of records per chunk (content-defined boundaries, see
      docs/FORMAT.md §4.1). ``None`` (default) picks it from the store's mean record size so a
      mean chunk holds about 1 MiB (``kubo:``: its blocks' while its LevelDB holds few records,
      docs/DATASTORES.md); incremental backups reuse the parent's value.
    - ``chunk_max_bytes`` (default 2 MiB): a chunk is cut before it grows past this size, even
      when small records in the same store pull the automatic chunk size up.
    - ``timeout`` seconds (default none): the backup is cancelled when it runs longer;
      nothing is left at the archive path.
    - ``verify_integrity`` (default True): after writing, re-read the archive and check every
      member checksum before reporting success.
    - ``include_metadata`` (default False): store a key catalog (key, value size, value XXH3)
      so `ls` and prefix restores need no inflate of the values.
    - ``exclude_patterns``: key globs (docs/PATTERNS.md); ``*`` matches within one path
      segment, ``**`` zero or more segments, ``?`` one character other than ``/``, ``[...]``
      a class. ``/pins/*`` excludes ``/pins/a`` but not ``/pins/a/b``; ``/local/**`` excludes
      everything under ``/local``.
    - ``workers`` (default: CPU count): parallel scan workers and compression threads.
    - ``trust_content_keys`` (default True): in an incremental backup, a chunk of
      content-addressed keys (``/blocks/...``, or every key of a flatfs blockstore: the key is
      the multihash of the value) whose keys and value sizes match the parent's is taken as
      unchanged without reading its values. False reads and compares them.
    - ``overwrite`` (default False): a file already at the archive path is an error
      (ArchiveExistsError, exit 2). True replaces it — except an archive that another archive
      in its directory (or in the given parent directories) uses as its parent, which is
      never replaced.
    - ``skip_foreign`` (default False): files under a flatfs, helia or fsds store that do
      not belong to its layout (wrong shard, invalid name, stray temp file) make the backup
      fail; True backs up the rest and reports them (``statistics.foreign_files``).
    - ``datastore_only`` (default False): a backup of a whole node (``kubo:``) also stores the
      node's own files (config with the identity's private key, version, datastore_spec,
      keystore/ ...) in the archive's node member (format version 2, docs/FORMAT.md §11.2);
      True archives the datastore records only (a version-1 archive, as before).
    - ``paged_index`` (default ``auto``): ``auto`` writes a paged index (format version 2,
      docs/FORMAT.md §11.3: memory and open time independent of the archive's size) when the
      store's estimates give more than one index page of chunks (4096), else the version-1
      single index, so small archives stay as they were; ``always``/``never`` force it.
    - ``codec`` (default ``gzip``): ``zstd`` stores each chunk as a zstd frame (format
      version 2, flag bit 2, docs/FORMAT.md §11.6; faster to restore, smaller); then
      ``compression_level`` is zstd's, 1-19 (default 1). Catalogs stay deflate.
    - ``trust_parent`` (default False): an incremental's check before the rename re-reads
      the parent members its references resolve to (docs/INCREMENTAL.md "The check before
      the rename": for an unchanged store, about the parent chain's size); True skips that
      read only (the references are still checked against the parents' indexes), for chains
      verified on a schedule of their own (the scheduler sets it for an incremental whose
      parent just passed its quick verify, docs/SCHEDULER.md).
    - ``resume`` (default False): continue the temp file a killed full backup left for the
      same archive path (docs/FORMAT.md §11.5); a normal backup when there is none.
    """

    compression_level: int = 1
    codec: str = "gzip"
    chunk_size: int | None = None
    chunk_max_bytes: int = DEFAULT_CHUNK_MAX_BYTES
    timeout: float | None = None
    verify_integrity: bool = True
    include_metadata: bool = False
    exclude_patterns: list[str] = field(default_factory=list)
    workers: int | None = None
    trust_content_keys: bool = True
    overwrite: bool = False
    skip_foreign: bool = False
    datastore_only: bool = False
    paged_index: str = "auto"
    resume: bool = False
    trust_parent: bool = False
    # key material (dsbackup.archive.crypto.KeyMaterial): write encrypted archives
    # (docs/ENCRYPTION.md); never printed, never in to_dict()
    encryption: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.encryption is not None:
            from dsbackup.archive.crypto import KeyMaterial

            if not isinstance(self.encryption, KeyMaterial):
                raise ConfigError("encryption must be key material (dsbackup.archive.crypto."
                                  "load_passphrase_file / load_key_file / KeyMaterial)")
        if self.codec not in codecs.CODECS:
            raise ConfigError(f"codec must be {' or '.join(codecs.CODECS)}, got {self.codec!r}")
        lo, hi = codecs.LEVELS[self.codec]
        if (isinstance(self.compression_level, bool) or not isinstance(self.compression_level, int)
                or not lo <= self.compression_level <= hi):
            what = "" if self.codec == codecs.GZIP else f" for codec {self.codec}"
            raise ConfigError(f"compression_level must be {lo}-{hi}{what}, got "
                              f"{self.compression_level!r}")
        if self.chunk_size is not None and (
                not isinstance(self.chunk_size, int) or not 1 <= self.chunk_size <= MAX_CHUNK_SIZE):
            raise ConfigError(f"chunk_size must be an integer from 1 to {MAX_CHUNK_SIZE}, got "
                              f"{self.chunk_size!r}")
        if not isinstance(self.chunk_max_bytes, int) or not (
                4096 <= self.chunk_max_bytes <= 1 << 30):
            raise ConfigError(
                f"chunk_max_bytes must be between 4096 and 1 GiB, got {self.chunk_max_bytes!r}")
        if self.timeout is not None and (not isinstance(self.timeout, (int, float))
                                         or not 0 < self.timeout < threading.TIMEOUT_MAX):
            raise ConfigError(f"timeout must be a positive number of seconds, got "
                              f"{self.timeout!r}")  # nan, inf: a timer cannot wait that long
        check_workers(self.workers)
        # skip_foreign = "no" (a config file) was truthy: foreign files skipped, not refused
        for name in ("verify_integrity", "include_metadata", "trust_content_keys", "overwrite",
                     "skip_foreign", "datastore_only", "resume", "trust_parent"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.paged_index not in ("auto", "always", "never"):
            raise ConfigError(f"paged_index must be auto, always or never, got "
                              f"{self.paged_index!r}")
        if isinstance(self.exclude_patterns, str):
            self.exclude_patterns = [self.exclude_patterns]
        for p in self.exclude_patterns:
            if not p:
                raise ConfigError("empty exclude pattern")
        key_matcher(self.exclude_patterns, "exclude_patterns")  # a bad glob fails here

    @property
    def chunk_level(self) -> int:
        """The chunk level (dsbackup.codec) workers compress chunks with."""
        return codecs.chunk_level(self.codec, self.compression_level,
                                  sealed=self.encryption is not None)

    @property
    def engine(self) -> str:
        """The manifest's ``engine`` of the chunks."""
        if self.codec == codecs.ZSTD:
            return f"zstd-{self.compression_level}"
        return ENGINES[self.compression_level]

    @property
    def effective_workers(self) -> int:
        return effective_workers(self.workers)

    def resolve_chunk_size(self, approx_count: int | None, approx_size: int | None) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        if not approx_count or not approx_size:
            return 1000
        mean = max(1.0, approx_size / approx_count)
        return max(1, min(1_000_000, round(AUTO_CHUNK_TARGET_BYTES / mean)))

    def to_dict(self) -> dict[str, Any]:
        key, self.encryption = self.encryption, None  # no secret in a copy or a report
        try:
            out = asdict(self)
        finally:
            self.encryption = key
        out["encryption"] = None if key is None else key.kind
        return out
