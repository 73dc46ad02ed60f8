"""Datastores: the protocol, the backends and ``open_datastore``. See docs/DATASTORES.md."""

from dsbackup.datastores.base import (
    BaseDatastore,
    Batch,
    Checkable,
    Datastore,
    DiskUsage,
    Scrubbable,
)
from dsbackup.datastores.query import (
    Entry,
    FilterKeyCompare,
    FilterKeyPrefix,
    FilterValueCompare,
    OrderByFunction,
    OrderByKey,
    OrderByKeyDescending,
    OrderByValue,
    OrderByValueDescending,
    Query,
    Results,
)
from dsbackup.datastores.registry import detect_scheme, open_datastore, parse_uri, register_backend
from dsbackup.errors import NotFound

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
