"""Is a file an archive of the Go tool's format? First a look at its first 14 bytes.

Every dsbackup archive starts with a gzip member whose head is dsbackup's own (docs/FORMAT.md
§2: FEXTRA set, the "DS" subfield first); the Go tool's gzip writer sets no such field. A
file that starts so is answered from those bytes alone; anything else goes to
compat.goformat.is_go_archive, which reads the first tar header. `verify` and `restore` ask
this of every archive they open, and goformat's imports (tarfile, tempfile, sqlite3, ISA-L's
gzip reader) and its first read cost ~10 ms of CPU that a dsbackup archive does not need.
"""

from __future__ import annotations

import os
import stat

from dsbackup.archive.format import GZIP_HEAD, SUBFIELD_ID
from dsbackup.storage import is_remote

_HEAD = len(GZIP_HEAD) + 2 + len(SUBFIELD_ID)  # gzip head, XLEN, SI1 SI2


def starts_as_dsbackup(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a local regular file that starts with a dsbackup member head."""
    if is_remote(path):
        return False
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO's open() would wait for a writer
            return False
        with open(path, "rb", buffering=0) as f:
            head = f.read(_HEAD)
    except (OSError, ValueError):
        return False
    return head[:len(GZIP_HEAD)] == GZIP_HEAD and head[len(GZIP_HEAD) + 2:] == SUBFIELD_ID


def is_go_archive(path: str | os.PathLike[str]) -> bool:
    """compat.goformat.is_go_archive, without its imports for a dsbackup archive."""
    if starts_as_dsbackup(path):
        return False
    from dsbackup.compat.goformat import is_go_archive as sniff

    return sniff(path)
