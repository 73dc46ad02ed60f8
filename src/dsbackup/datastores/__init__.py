"""Datastores: the protocol, the backends and ``open_datastore``. See docs/DATASTORES.md.

The query types are imported on first use (PEP 562): a backup or restore makes no query,
and its workers import this package before they fork (start-up, docs/PERFORMANCE.md)."""

from dsbackup._lazy import lazy_names
from dsbackup.datastores.base import (
    BaseDatastore,
    Batch,
    Checkable,
    Datastore,
    DiskUsage,
    Scrubbable,
)
from dsbackup.datastores.registry import detect_scheme, open_datastore, parse_uri, register_backend
from dsbackup.errors import NotFound

_LAZY = {name: "dsbackup.datastores.query" for name in (
    "Entry",
    "FilterKeyCompare",
    "FilterKeyPrefix",
    "FilterValueCompare",
    "OrderByFunction",
    "OrderByKey",
    "OrderByKeyDescending",
    "OrderByValue",
    "OrderByValueDescending",
    "Query",
    "Results",
)}

__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

__all__ = [
    "BaseDatastore",
    "Batch",
    "Checkable",
    "Datastore",
    "DiskUsage",
    "Entry",
    "FilterKeyCompare",
    "FilterKeyPrefix",
    "FilterValueCompare",
    "NotFound",
    "OrderByFunction",
    "OrderByKey",
    "OrderByKeyDescending",
    "OrderByValue",
    "OrderByValueDescending",
    "Query",
    "Results",
    "Scrubbable",
    "detect_scheme",
    "open_datastore",
    "parse_uri",
    "register_backend",
]
