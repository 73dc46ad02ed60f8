"""The C library through ctypes, found without ``ctypes.util.find_library``.

``find_library`` runs ``ldconfig -p`` in a subprocess (tens of milliseconds, in every process
that asks); the C library's symbols are already loaded into every CPython process, so the
process's own symbol table (``dlopen(NULL)``) has them.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The loaded C library (errno kept for ``ctypes.get_errno``), or None where there is none
    to load."""
    for name in (None, "libc.so.6"):
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            lib.free  # noqa: B018 - a C library has free()
            return lib
        except (OSError, AttributeError):
            continue
    return None
