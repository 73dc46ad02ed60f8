"""What the steps of one run share: the compiled transform, the run context, progress events,
and the reserved temporary namespace of in-place steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dsbackup.errors import Cancelled, MigrationError, ValidationError
from dsbackup.keys import key_str
from dsbackup.metadata import per_second
from dsbackup.migration.config import MigrationConfig
from dsbackup.migration.journal import Journal
from dsbackup.migration.transforms import (
    KeyTransform,
    ValueTransform,
    compile_key_transform,
    compile_value_transform,
)
from dsbackup.migration.validators import Validator, compile_validators

if TYPE_CHECKING:  # plan.py compiles its transforms with this module
    from dsbackup.migration.plan import TransformationConfig

__all__ = ["CompiledTransform", "ProgressEvent", "RunContext", "TMP_END", "TMP_ROOT",
           "after", "prefix_end", "scan_ranges", "stored_keys"]

TMP_ROOT = b"/_DSMIGRATE_"
TMP_END = b"/_DSMIGRATE`"  # the byte after "_" is "`": [TMP_ROOT, TMP_END) is every temp key
MAX_ERROR_MESSAGES = 20


def after(key: bytes) -> bytes:
    """The smallest key greater than ``key``."""
    return key + b"\x00"


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def scan_ranges(start: bytes, end: bytes | None) -> list[tuple[bytes, bytes | None]]:
    """``[start, end)`` minus the temporary namespace."""
    out: list[tuple[bytes, bytes | None]] = []
    first_end = TMP_ROOT if end is None or end > TMP_ROOT else end
    if start < first_end:
        out.append((start, first_end))
    second_start = max(start, TMP_END)
    if end is None or second_start < end:
        out.append((second_start, end))
    return out


def stored_keys(store: Any, keys: list[bytes]) -> list[bytes]:
    """The keys as the backend that stores them sees them: under a mount (``kubo:``) the
    mounted child's key (``/blocks/NAME`` -> ``/NAME`` in the flatfs at ``/blocks``); the
    keys themselves elsewhere. Validators are given these."""
    lookup = getattr(store, "lookup", None)
    if lookup is None:
        return keys
    out = []
    for k in keys:
        r = lookup(k)
        out.append(k if r is None else r[1])
    return out


@dataclass
class CompiledTransform:
    key: KeyTransform
    value: ValueTransform
    validators: list[Validator]

    @classmethod
    def build(cls, cfg: TransformationConfig | None, where: str = "transform"
              ) -> CompiledTransform:
        if cfg is None:  # no transform: the identity, no validators
            return cls(compile_key_transform([], {}, where), compile_value_transform([], where),
                       compile_validators([], where))
        return cls(compile_key_transform(cfg.key_specs, cfg.mappings, where),
                   compile_value_transform(cfg.value_specs, where),
                   compile_validators(cfg.validators, where))

    @property
    def identity(self) -> bool:
        return self.key.identity and self.value.identity

    def apply(self, keys: list[bytes], values: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        if not self.key.identity:
            keys = self.key.apply_batch(keys)
            for k in keys:
                if TMP_ROOT <= k < TMP_END:
                    raise MigrationError(f"a transform produced {key_str(k)!r}, inside the "
                                         f"reserved namespace {key_str(TMP_ROOT)}*")
        if not self.value.identity:
            values = self.value.apply_batch(values)
        return keys, values

    def check(self, keys: list[bytes], values: list[bytes], step_id: str,
              store: Any = None) -> None:
        """Raise :class:`ValidationError` at the first record a validator rejects.
        Validators see each key as ``store`` stores it (:func:`stored_keys`)."""
        if not self.validators:
            return
        seen = stored_keys(store, keys)
        for v in self.validators:
            for k, sk, val in zip(keys, seen, values):
                reason = v(sk, val)
                if reason:
                    raise ValidationError(f"step {step_id!r}: validator {v.name} rejected "
                                          f"key {key_str(k)}: {reason}")


@dataclass
class ProgressEvent:
    step_id: str
    step_index: int
    steps_total: int
    phase: str
    records: int
    bytes: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        return per_second(self.records, self.elapsed_s)


@dataclass
class RunContext:
    """What every step of one run shares."""

    config: MigrationConfig
    dry_run: bool = False
    journal: Journal | None = None
    progress: Callable[[ProgressEvent], None] | None = None
    cancel: threading.Event | None = None
    deadline: float | None = None
    steps_total: int = 0
    error_log: list[str] = field(default_factory=list)
    cleanup_requested: bool = False
    # lend stores exclusively: exclusive(a, b) is a context manager that closes both
    # (they must be LMDB stores this run opened) and reopens them on exit, giving
    # ``holder.stores`` the new objects; None when the caller cannot do that
    exclusive: Callable[..., Any] | None = None

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("migration cancelled; its journal is kept, re-run with --resume")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Cancelled(f"migration timed out after {self.config.timeout} s; its journal "
                            f"is kept, re-run with --resume")
