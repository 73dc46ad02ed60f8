"""BackupPlan: everything one archive is written from, decided before the first chunk.

A full and an incremental backup differ only in how they fill it (dsbackup.engine.full,
dsbackup.engine.incremental) and in the chunk stream they hand to the write loop
(dsbackup.engine.write); the manifest and the metadata are built from it in one place
(dsbackup.engine.manifest).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dsbackup.archive.chain import ParentRef
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.nodefiles import NodeSnapshot
from dsbackup.metadata import Progress

ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class BackupPlan:
    """One archive to write.

    - ``source``: the manifest's `source` object (uri, backend, estimates of a full backup);
      ``totals``: (records, bytes) estimates for progress callbacks, or Nones.
    - ``chunk_size``/``chunk_max_bytes``: as resolved (a full backup: from the config and the
      store; an incremental: the parent's).
    - ``parent``: the parent reference (None for a full backup) and its fingerprint; ``kdf``:
      the parent's scrypt parameters an encrypted incremental reuses.
    - ``page_entries``: chunks per index page of a paged index (§11.3), None: one index.
    - ``check``: run on the temporary file before the rename (None: no check).
    - ``resume``: a killed backup's temp file this one continues (dsbackup.engine.resume).
    """

    path: Path
    cfg: BackupConfig
    created: datetime
    source: dict[str, Any]
    chunk_size: int
    chunk_max_bytes: int
    node: NodeSnapshot | None
    cancel: threading.Event
    t0: float
    progress: ProgressCallback | None = None
    totals: tuple[int | None, int | None] = (None, None)
    parent: ParentRef | None = None
    kdf: dict[str, Any] | None = None
    page_entries: int | None = None
    check: Callable[[Path], None] | None = field(default=None, compare=False)
    resume: Any = field(default=None, compare=False)  # dsbackup.engine.resume.Resumption

    @property
    def catalog(self) -> bool:
        return self.cfg.include_metadata

    @property
    def parent_fingerprint(self) -> str | None:
        return None if self.parent is None else self.parent.fingerprint
