"""Exceptions of dsbackup. Each class carries its exit code; the CLI maps them in one place.

Exit codes (docs/EXIT_CODES.md is generated from these classes by ``python -m dsbackup.errors``):
0 ok, 1 warning, 2 error, 3 integrity failure, 4 locked/busy, 130 interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_WARNING = 1
EXIT_ERROR = 2
EXIT_INTEGRITY = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130


class DsBackupError(Exception):
    """Base class: an error the user can act on. ``exit_code`` is what the CLI returns."""

    exit_code: int = EXIT_ERROR
    description: str = "error"


class ConfigError(DsBackupError, ValueError):
    """Invalid configuration, plan, URI or command-line value."""

    description = "invalid configuration or argument"


class DatastoreError(DsBackupError):
    """A datastore could not be opened, read or written."""

    description = "datastore error"


class LmdbOSError(DatastoreError, OSError):
    """An LMDB failure of the native writers (``LmdbWriteError``, ``LmdbCopyError``): an
    ``OSError`` whose ``errno`` is set for a system error, printed as its message alone
    (without Python's ``[Errno N]`` prefix)."""

    description = "LMDB write or copy failed"

    def __str__(self) -> str:
        return self.strerror if self.errno is not None and self.strerror else OSError.__str__(self)


class NotFound(DatastoreError, KeyError):
    """A key is not in the datastore (go-datastore's ErrNotFound)."""

    description = "key not found"

    def __str__(self) -> str:  # KeyError quotes its argument; we want the message as is
        return str(self.args[0]) if self.args else "key not found"


class InvalidKey(DatastoreError, ValueError):
    """A key the backend cannot store (e.g. outside the flatfs charset)."""

    description = "invalid key for this datastore"


class LockedError(DsBackupError):
    """A repository, datastore or state directory is locked by another process."""

    exit_code = EXIT_LOCKED
    description = "locked or busy"


class ArchiveError(DsBackupError):
    """An archive cannot be read or written (missing, unreadable, wrong format)."""

    description = "archive error"


class ArchiveUnavailable(ArchiveError):
    """There is no archive to read at a path: missing, a directory, a pipe, or not readable.
    Not damage: ``verify`` exits 2 for it, as ``inspect`` and ``restore`` do."""

    description = "archive missing or unreadable"


class S3ApiError(ArchiveUnavailable):
    """A request of dsbackup's own S3 client (listing and aborting multipart uploads) failed:
    the server's status and error code, or the connection's error. The message is scrubbed of
    credentials by the raiser (dsbackup.storage.s3api)."""

    description = "S3 request failed"

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class UnsupportedArchive(ArchiveError):
    """A well-formed archive of a format version or feature this build does not read (docs/
    FORMAT.md §11): refused, never guessed. Not damage: ``verify`` exits 2 for it."""

    description = "archive format not supported by this version"


class IntegrityError(ArchiveError):
    """Stored bytes do not match their checksums, or the structure is damaged or hostile.

    ``chunk`` is the chunk number at fault when known; ``part`` names the structure otherwise
    (``"trailer"``, ``"index"``, ``"manifest"``, ``"summary"``).
    """

    exit_code = EXIT_INTEGRITY
    description = "integrity failure"

    def __init__(self, message: str, *, chunk: int | None = None, part: str | None = None):
        super().__init__(message)
        self.chunk = chunk
        self.part = part


class KeyRequiredError(ArchiveError):
    """An encrypted archive was given without key material (docs/ENCRYPTION.md)."""

    description = "archive is encrypted: key needed"


class WrongKeyError(ArchiveError):
    """The passphrase or key does not unwrap an encrypted archive's data key."""

    description = "wrong passphrase or key"


class PlainArchiveError(ArchiveError):
    """A key was given for an archive that is not encrypted: read as it is, an encrypted
    archive replaced by a plain one would pass unnoticed (docs/ENCRYPTION.md)."""

    description = "archive is not encrypted, but a key was given"

    @classmethod
    def given(cls, where: str, option: str) -> PlainArchiveError:
        """The error for archive `where`, read with key option `option`."""
        return cls(f"{where}: archive is not encrypted, but {option} was given: refusing to "
                   "read it as if it were authenticated (an encrypted archive replaced by a "
                   "plain one reads so); leave out the key option to read a plain archive")


class ArchiveExistsError(ArchiveError):
    """The output path already holds a file, or an archive other archives depend on."""

    description = "archive exists (not replaced)"


class PathConflictError(ConfigError):
    """An archive would be written into (or replace) a store it reads or writes, or a restore
    target would contain the archive it is restored from."""

    description = "archive and store paths overlap"


class MissingParentError(ArchiveError):
    """An incremental archive refers to a parent archive that cannot be found or does not match."""

    description = "parent archive missing or altered"


class BackupError(DsBackupError):
    """A backup failed."""

    description = "backup failed"


class RestoreError(DsBackupError):
    """A restore failed."""

    description = "restore failed"


class TargetNotEmpty(RestoreError):
    """A restore in mode "empty" found keys in its target; ``target`` names it."""

    description = "restore target not empty"

    def __init__(self, message: str, *, target: str = "") -> None:
        super().__init__(message)
        self.target = target


class MigrationError(DsBackupError):
    """A migration failed."""

    description = "migration failed"


class ValidationError(MigrationError):
    """A migration validator rejected a record."""

    description = "validation failed"


class SchedulerError(DsBackupError):
    """The scheduler failed."""

    description = "scheduler error"


class Cancelled(DsBackupError):
    """The operation was cancelled or timed out; nothing partial was left at a final path."""

    exit_code = EXIT_INTERRUPTED
    description = "interrupted or timed out"


class JournalCorrupt(MigrationError):
    """A migration journal is damaged; the migration stops and writes no version stamp."""

    description = "migration journal corrupt"


def _import_native_modules() -> None:
    """Import every native module (dsbackup._ext.*): their exception classes, raised from
    ext/*.pyx, are DsBackupError subclasses and belong in the table whatever ran before."""
    import importlib
    import pkgutil

    import dsbackup._ext as ext

    for m in sorted(pkgutil.iter_modules(ext.__path__), key=lambda m: m.name):
        importlib.import_module(f"{ext.__name__}.{m.name}")


def exit_code_table() -> str:
    """Markdown table of exit codes, generated from the exception classes (the native ones
    included)."""
    _import_native_modules()
    rows = ["| exit code | meaning | raised as |", "|---|---|---|"]
    rows.append(f"| {EXIT_OK} | success | - |")
    rows.append(f"| {EXIT_WARNING} | finished with warnings (e.g. skipped keys) | - |")
    seen: dict[int, list[type[DsBackupError]]] = {}
    visited: set[type[DsBackupError]] = set()
    stack: list[type[DsBackupError]] = [DsBackupError]
    while stack:
        cls = stack.pop()
        if cls in visited:  # a class with two DsBackupError bases is reached twice
            continue
        visited.add(cls)
        seen.setdefault(cls.exit_code, []).append(cls)
        stack.extend(cls.__subclasses__())
    for code in sorted(seen):
        classes = sorted(seen[code], key=lambda c: c.__name__)
        meaning = classes[0].description if len(classes) == 1 else {
            EXIT_ERROR: "error",
            EXIT_INTEGRITY: "integrity failure",
            EXIT_LOCKED: "locked or busy",
            EXIT_INTERRUPTED: "interrupted",
        }.get(code, classes[0].description)
        names = ", ".join(f"`{c.__name__}`" for c in classes)
        rows.append(f"| {code} | {meaning} | {names} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    # the classes of the imported module dsbackup.errors (the native ones subclass those),
    # not this __main__ copy's
    from dsbackup.errors import exit_code_table as _table

    print(_table(), end="")
