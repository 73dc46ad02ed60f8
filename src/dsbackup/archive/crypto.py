"""Encrypted archives (docs/FORMAT.md §11.4): key material, the key header, sealing members.

Primitives come from `cryptography` (AES-256-GCM for the key wrap, for encrypting chunks and
catalogs and for opening members, scrypt for passphrases, HKDF-SHA256 for the key check) and
from OpenSSL's EVP through ``dsbackup._ext.seal`` (AES-256-GCM sealing of the single members,
fused with their stored-block framing and checksums). Secrets live in private pages left out
of core files (``secret_buffer``) that ``close`` zeroes; their reprs and every message name no
secret.
"""

from __future__ import annotations

import errno
import json
import logging
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from dsbackup.errors import (
    ArchiveError,
    ConfigError,
    IntegrityError,
    PlainArchiveError,
    WrongKeyError,
)

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from dsbackup._ext.seal import GcmKey

# `cryptography` is imported where it is used: it costs ~20 ms of start-up, which a command
# on a plain archive (restore, verify, ls) need not pay

KEY_BYTES = 32
TAG_BYTES = 16
STORED_BLOCK = 65535  # bytes of data per stored deflate block of a sealed member
NONCE_BYTES = 12
ID_BYTES = 16
SALT_BYTES = 16
# scrypt defaults (128 MiB; docs/ENCRYPTION.md records the time measured) and reader bounds
DEFAULT_LOG2_N, DEFAULT_R, DEFAULT_P = 17, 8, 1
MIN_LOG2_N, MAX_LOG2_N, MAX_RP = 14, 22, 64
# scrypt's memory is 128·n·r bytes: readers refuse more than a writer's largest (n = 2^22 with
# r = 8: 4 GiB); n, r and r·p within their own bounds could otherwise ask for 32 GiB
MAX_SCRYPT_MEMORY = 128 * (1 << MAX_LOG2_N) * DEFAULT_R
# and its work is n·r·p mixing rounds: a writer's largest is n = 2^22 with r = 8, p = 1 (about
# 30 times the default's); n = 2^22, r = 1, p = 64 passes the other bounds at 8 times that
# (minutes of CPU for each key tried, before "wrong passphrase or key")
MAX_SCRYPT_WORK = (1 << MAX_LOG2_N) * DEFAULT_R * DEFAULT_P
# test-only: a smaller scrypt n for writers (bounded below by the readers' minimum)
TEST_LOG2_N_ENV = "DSBACKUP_TEST_SCRYPT_LOG2N"
PASSPHRASE_ENV = "DSBACKUP_PASSPHRASE"
WRAP_AAD = b"dsbackup-key-v1"
CHECK_INFO = b"dsbackup key check"
MISSING_KEY = ("archive is encrypted: give --passphrase-file, DSBACKUP_PASSPHRASE or "
               "--key-file")
WRONG_KEY = "wrong passphrase or key"

_NONCE_TAIL = struct.Struct("<Q")
MAX_EPOCH = (1 << 24) - 1  # the nonce's epoch field (docs/FORMAT.md §11.4)
_AAD_TAIL = struct.Struct("<QQ")
_MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18)  # Linux >= 4.14; not in Python 3.11


def _random(n: int) -> bytes:
    """Random bytes (tests replace this to fix the data key and archive id)."""
    return os.urandom(n)


def _zero(buf: bytearray | memoryview) -> None:
    buf[:] = bytes(len(buf))


def secret_buffer(data: bytes | bytearray | memoryview) -> memoryview:
    """A writable copy of `data` in its own private anonymous pages, marked MADV_DONTDUMP
    (never in a core file, even where the process stays dumpable) and MADV_WIPEONFORK (a
    forked child sees zeros), as far as the kernel has them. Zero it with ``_zero``."""
    m = mmap.mmap(-1, max(len(data), 1), flags=mmap.MAP_PRIVATE,
                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
    for advice in (getattr(mmap, "MADV_DONTDUMP", None), _MADV_WIPEONFORK):
        if advice is not None:
            try:
                m.madvise(advice)
            except (OSError, ValueError):
                pass  # an older kernel: PR_SET_DUMPABLE (below) still keeps core files away
    view = memoryview(m)[:len(data)]
    view[:] = data
    return view


def _no_core_dumps() -> None:
    """Keep key material out of core files: mark the process not dumpable (prctl), cheap
    and process-wide; best effort where there is no prctl."""
    from dsbackup._libc import libc

    lib = libc()
    try:
        if lib is not None:
            lib.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4, SUID_DUMP_DISABLE = 0
    except (AttributeError, OSError):
        pass


class KeyMaterial:
    """A passphrase or a raw 32-byte key (never printed). KEKs derived from a passphrase
    are cached per (salt, n, r, p): a chain with one salt costs one derivation."""

    def __init__(self, *, passphrase: bytes | bytearray | None = None,
                 key: bytes | bytearray | None = None) -> None:
        if (passphrase is None) == (key is None):
            raise ValueError("give exactly one of passphrase and key")
        if key is not None and len(key) != KEY_BYTES:
            raise ConfigError(f"a key file must hold {KEY_BYTES} raw bytes or "
                              f"{2 * KEY_BYTES} hex digits")
        if passphrase is not None and not passphrase:
            raise ConfigError("the passphrase is empty")
        self.kind = "scrypt" if passphrase is not None else "raw"
        self._secret = secret_buffer(passphrase if passphrase is not None else key)  # type: ignore[arg-type]
        self._keks: dict[tuple, memoryview] = {}
        self._kdf: dict[str, Any] | None = None
        self._lock = threading.RLock()
        _no_core_dumps()

    def __repr__(self) -> str:
        return f"<KeyMaterial {self.kind}>"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # never pickled into a worker or a state file
        raise TypeError("key material cannot be pickled")

    def new_kdf(self) -> dict[str, Any]:
        """The kdf object of a new key header: one salt per key material object, so a process
        writing several archives (the scheduler, a benchmark) derives the KEK once; each
        archive still has its own data key and wrap nonce."""
        if self.kind == "raw":
            return {"name": "raw"}
        with self._lock:
            if self._kdf is None:
                self._kdf = self._fresh_kdf()
            return dict(self._kdf)

    def _fresh_kdf(self) -> dict[str, Any]:
        log2n = DEFAULT_LOG2_N
        env = os.environ.get(TEST_LOG2_N_ENV)
        if env:
            try:
                log2n = int(env)
            except ValueError:
                raise ConfigError(f"{TEST_LOG2_N_ENV}={env!r} is not an integer") from None
            if not MIN_LOG2_N <= log2n <= MAX_LOG2_N:
                raise ConfigError(f"{TEST_LOG2_N_ENV} must lie in {MIN_LOG2_N}..{MAX_LOG2_N}")
        return {"name": "scrypt", "salt": _random(SALT_BYTES).hex(), "n": 1 << log2n,
                "r": DEFAULT_R, "p": DEFAULT_P}

    def kek(self, kdf: dict[str, Any], where: str) -> memoryview:
        """The key-encryption key for a header's kdf (checked against the reader bounds)."""
        name = kdf.get("name")
        if name == "raw":
            if self.kind != "raw":
                raise WrongKeyError(f"{where}: {WRONG_KEY} (the archive needs a key file)")
            return self._secret
        if name != "scrypt":
            raise IntegrityError(f"{where}: key header names unknown kdf {name!r}", part="key")
        if self.kind != "scrypt":
            raise WrongKeyError(f"{where}: {WRONG_KEY} (the archive needs a passphrase)")
        try:
            salt = bytes.fromhex(kdf["salt"])
            n, r, p = kdf["n"], kdf["r"], kdf["p"]
            if not all(type(x) is int for x in (n, r, p)):  # not 1e5, Infinity, true (JSON)
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise IntegrityError(f"{where}: key header has invalid kdf parameters",
                                 part="key") from None
        if (len(salt) != SALT_BYTES or n & (n - 1) or not 1 << MIN_LOG2_N <= n <= 1 << MAX_LOG2_N
                or r < 1 or p < 1 or r * p > MAX_RP or 128 * n * r > MAX_SCRYPT_MEMORY
                or n * r * p > MAX_SCRYPT_WORK):
            raise IntegrityError(f"{where}: key header kdf parameters out of bounds "
                                 f"(n={n}, r={r}, p={p})", part="key")
        ident = (salt, n, r, p)
        with self._lock:
            kek = self._keks.get(ident)
            if kek is None:
                from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

                # the derived key is returned as bytes by the library: copied into a secret
                # buffer and dropped at once
                try:
                    derived = Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p).derive(
                        self._secret)
                except MemoryError:
                    raise ArchiveError(f"{where}: not enough memory to derive the key (scrypt "
                                       f"n={n}, r={r} needs {128 * n * r >> 20} MiB)") from None
                kek = self._keks[ident] = secret_buffer(derived)
        return kek

    def close(self) -> None:
        with self._lock:
            _zero(self._secret)
            for k in self._keks.values():
                _zero(k)
            self._keks.clear()


_warned: set[tuple[str, int]] = set()  # (path, mode) said once per process (a scheduler)


def _warn_if_exposed(f: Any, path: str | os.PathLike[str], what: str) -> None:
    """One line on stderr when the secret file `f` (opened) gives group or others any
    access, as ssh and gpg do. A warning, not a refusal: a nightly backup that stopped on a
    key file's mode would leave no backup at all, and a restore must read its archives."""
    try:
        mode = os.fstat(f.fileno()).st_mode
    except OSError:
        return
    bits = mode & 0o077
    if not bits or (str(path), mode) in _warned:
        return
    _warned.add((str(path), mode))
    log.warning("%s %s is accessible by %s (mode %04o): anyone who can read it can "
                "decrypt the archives; chmod 600 it", what, os.fspath(path),
                "group and others" if bits & 0o070 and bits & 0o007 else
                "its group" if bits & 0o070 else "others", mode & 0o7777)


def load_key_file(path: str | os.PathLike[str]) -> KeyMaterial:
    """A key file: 32 raw bytes, or 64 hex digits (one trailing newline allowed). A file
    that group or others may access is used, with a warning on stderr."""
    try:
        with open(path, "rb") as f:
            _warn_if_exposed(f, path, "key file")
            data = bytearray(f.read(4096))
    except OSError as exc:
        raise ConfigError(f"key file {path}: cannot read: {exc.strerror}") from None
    try:
        if len(data) == KEY_BYTES:
            return KeyMaterial(key=data)
        text = bytes(data).strip()
        if len(text) == 2 * KEY_BYTES:
            try:
                raw = bytearray(bytes.fromhex(text.decode("ascii")))
            except (UnicodeDecodeError, ValueError):
                raw = None
            if raw is not None:
                try:
                    return KeyMaterial(key=raw)
                finally:
                    _zero(raw)
        raise ConfigError(f"key file {path}: must hold {KEY_BYTES} raw bytes or "
                          f"{2 * KEY_BYTES} hex digits")
    finally:
        _zero(data)


def write_key_file(path: str | os.PathLike[str]) -> None:
    """Create a new random key file (64 hex digits and a newline), mode 0600, never replacing
    an existing file."""
    key = bytearray(os.urandom(KEY_BYTES))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise ConfigError(f"key file {path}: already exists; not replacing it") from None
    except OSError as exc:
        raise ConfigError(f"key file {path}: cannot create: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        text = key.hex().encode() + b"\n"
        if os.write(fd, text) != len(text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)
    except BaseException as exc:  # a full disk, Ctrl-C: no empty or short key file is left
        os.close(fd)
        os.unlink(path)
        if isinstance(exc, OSError):
            raise ConfigError(f"key file {path}: cannot write: {exc.strerror}; nothing was "
                              "left there") from None
        raise
    else:
        os.close(fd)
    finally:
        _zero(key)


def load_passphrase_file(path: str | os.PathLike[str]) -> KeyMaterial:
    """A passphrase file: its bytes, without one trailing newline (a file group or others
    may access: a warning, as for a key file)."""
    try:
        with open(path, "rb") as f:
            _warn_if_exposed(f, path, "passphrase file")
            data = bytearray(f.read(1 << 20))
    except OSError as exc:
        raise ConfigError(f"passphrase file {path}: cannot read: {exc.strerror}") from None
    try:
        for end in (b"\r\n", b"\n"):
            if data.endswith(end):
                del data[-len(end):]
                break
        if not data:
            raise ConfigError(f"passphrase file {path}: is empty")
        return KeyMaterial(passphrase=data)
    finally:
        _zero(data)


def sealed_size(n: int) -> int:
    """The bytes of an encrypted member's body for `n` bytes of data: the stored deflate
    blocks (at most 65535 bytes each, 5 bytes of header) of ``ciphertext || tag``
    zero-padded to 512 (= ``dsbackup._ext.seal.sealed_size(n)``, without loading it)."""
    total = -(-(n + TAG_BYTES) // 512) * 512
    return total + 5 * -(-total // 65535)


class ArchiveCipher:
    """One archive's data key: seals and opens its members (docs/FORMAT.md §11.4).

    The data key is kept in a secret buffer. A writer encrypts chunks and catalogs with
    `cryptography`'s streaming AES-GCM (measured twice as fast here as the system OpenSSL's)
    straight into their stored blocks (``encrypt_stored``; the native ``frame_into`` adds the
    framing and checksums) and seals the single members with OpenSSL's EVP in one native
    pass (``dsbackup._ext.seal``: encryption, stored blocks, CRC-32 and XXH3 together). A
    reader opens with `cryptography`: AESGCM for the single members, its streaming GCM for
    chunks and catalogs, read in place from their stored blocks (``open_pieces``). Each
    engine is made on first use: a reader never holds the native key, and neither holds
    AESGCM's own copy of the key but a reader."""

    def __init__(self, archive_id: bytes, dk: bytearray | memoryview, version: int) -> None:
        self.archive_id = archive_id
        self.version = version
        self._dk = secret_buffer(dk)
        _zero(dk)
        self._gcm: GcmKey | None = None
        self._seal: Any = None  # dsbackup._ext.seal.seal_stored, imported with the key
        self._seal_into: Any = None  # and seal_into
        self._aead: AESGCM | None = None
        self._alg: Any = None  # cryptography's AES (and its Cipher and GCM classes)
        self._cipher_cls: Any = None
        self._gcm_cls: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ArchiveCipher {self.archive_id.hex()}>"

    def __reduce__(self) -> Any:
        raise TypeError("an archive cipher cannot be pickled")

    @staticmethod
    def nonce(mtype: int, seq: int, epoch: int = 0) -> bytes:
        if not 0 <= epoch <= MAX_EPOCH:
            raise ValueError(f"epoch {epoch} does not fit the nonce's 24 bits")
        return bytes((mtype,)) + epoch.to_bytes(3, "little") + _NONCE_TAIL.pack(seq)

    def aad(self, mtype: int, seq: int, length: int, epoch: int = 0) -> bytes:
        return (self.archive_id + bytes((self.version, mtype)) + epoch.to_bytes(3, "little")
                + _AAD_TAIL.pack(seq, length))

    def seal_stored(self, mtype: int, seq: int, plaintext: bytes | memoryview,
                    epoch: int = 0) -> tuple[Any, int]:
        """(Body, xxh3): ``ciphertext || tag`` of a member's plaintext as the stored deflate
        blocks of its tar entry data (zero-padded to 512), and the XXH3-64 of the sealed
        bytes (the subfield's digest); natively, GIL released. `epoch`: the writing run's
        (0, or a resumed run's, docs/FORMAT.md §11.4/§11.5)."""
        gcm = self._gcm if self._gcm is not None else self._native()
        return self._seal(gcm, self.nonce(mtype, seq, epoch),
                          self.aad(mtype, seq, len(plaintext), epoch), plaintext)

    def seal_into(self, mtype: int, seq: int, plaintext: bytes | memoryview,
                  out: bytearray, epoch: int = 0) -> tuple[int, int, int, int, int]:
        """``seal_stored`` into the start of `out` (a buffer reused from member to member,
        at least ``dsbackup._ext.seal.sealed_size(len(plaintext))`` bytes): (bytes written,
        crc32, size, input_len, xxh3), as the Body's fields and the digest."""
        gcm = self._gcm if self._gcm is not None else self._native()
        return self._seal_into(gcm, self.nonce(mtype, seq, epoch),
                               self.aad(mtype, seq, len(plaintext), epoch), plaintext, out)

    def encrypt_stored(self, mtype: int, seq: int, plaintext: Any, out: Any,
                       epoch: int = 0) -> bytes:
        """The first half of ``seal_into`` by `cryptography`'s AES-GCM (measured 2-2.5x as
        fast here as the system OpenSSL's, docs/PERFORMANCE.md): the ciphertext of
        `plaintext` written straight into the data of the stored blocks of `out` (at
        ``dsbackup._ext.seal.data_offsets``), one ``update_into`` per block, the GIL
        released in each; returns the tag. ``frame_into`` completes
        the body: the same bytes as ``seal_into``. `out` holds at least
        ``sealed_size(len(plaintext))`` bytes."""
        alg = self._alg if self._alg is not None else self._algorithm()
        src = memoryview(plaintext).cast("B")
        dst = memoryview(out)
        n = len(src)
        if len(dst) < sealed_size(n):
            raise ValueError(f"encrypt_stored: the output buffer has {len(dst)} bytes, "
                             f"{sealed_size(n)} are needed")
        try:
            enc = self._cipher_cls(alg, self._gcm_cls(self.nonce(mtype, seq, epoch))).encryptor()
            enc.authenticate_additional_data(self.aad(mtype, seq, n, epoch))
            off, o = 0, 5
            while off < n:  # block k's data starts at 5 + 65540 k (FORMAT.md §11.4)
                end = off + STORED_BLOCK
                enc.update_into(src[off:end], dst[o:])
                off, o = end, o + STORED_BLOCK + 5
            enc.finalize()
            return enc.tag
        except (ValueError, TypeError, MemoryError):
            raise
        except Exception as exc:  # the library refused (no secret in its message)
            from dsbackup._ext.seal import SealError

            raise SealError(f"cryptography could not encrypt {n} bytes (AES-256-GCM): "
                            f"{type(exc).__name__}") from None

    def _algorithm(self) -> Any:
        """`cryptography`'s AES over the data key, made on first use: it refers to the
        secret buffer (no copy); each encryptor's or decryptor's context (the expanded key)
        is freed when it finalizes."""
        with self._lock:
            if self._alg is None:
                from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

                self._cipher_cls, self._gcm_cls = Cipher, modes.GCM
                self._alg = algorithms.AES(self._dk)
            return self._alg

    def prepare(self) -> None:
        """Make the native key and `cryptography`'s AES, and load their modules now (a
        writer, in a thread)."""
        if self._gcm is None:
            self._native()
        if self._alg is None:
            self._algorithm()

    def _native(self) -> GcmKey:
        """The native key (dsbackup._ext.seal), made on first use."""
        with self._lock:
            if self._gcm is None:
                from dsbackup._ext import seal

                self._seal, self._seal_into = seal.seal_stored, seal.seal_into
                self._gcm = seal.GcmKey(self._dk)
            return self._gcm

    def open(self, mtype: int, seq: int, stored: bytes | memoryview, where: str, *,
             chunk: int | None = None, part: str | None = None, epoch: int = 0) -> bytes:
        """The plaintext of ciphertext || tag sealed under `epoch`; IntegrityError naming
        `where` when altered."""
        if len(stored) < TAG_BYTES:
            raise IntegrityError(f"{where}: encrypted data shorter than its tag",
                                 chunk=chunk, part=part)
        aead = self._aead
        if aead is None:
            with self._lock:
                if self._aead is None:
                    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

                    self._aead = AESGCM(self._dk)  # the library keeps its own copy
                aead = self._aead
        try:
            return aead.decrypt(self.nonce(mtype, seq, epoch), stored,
                                self.aad(mtype, seq, len(stored) - TAG_BYTES, epoch))
        except _invalid_tag():
            raise IntegrityError(f"{where}: authentication failed (ciphertext, tag or header "
                                 "altered)", chunk=chunk, part=part) from None

    def open_pieces(self, mtype: int, seq: int, pieces: list[memoryview], where: str, *,
                    chunk: int | None = None, part: str | None = None,
                    epoch: int = 0) -> memoryview:
        """``open`` of ``ciphertext || tag`` given in pieces, views of a sealed member's stored
        blocks (``member.sealed_pieces``): decrypted straight from them into this thread's
        reused buffer by `cryptography`'s streaming AES-GCM, nothing copied before. Returns the
        plaintext as a view of that buffer, valid until this thread's next ``open_pieces``,
        and only once the tag matched (IntegrityError naming `where` otherwise)."""
        n = sum(len(p) for p in pieces) - TAG_BYTES
        if n < 0:
            raise IntegrityError(f"{where}: encrypted data shorter than its tag",
                                 chunk=chunk, part=part)
        out = _plain_buffer(n + TAG_BYTES)  # slack: update_into's bound in older versions
        alg = self._alg if self._alg is not None else self._algorithm()
        tag = b"".join(_last_bytes(pieces, TAG_BYTES))
        try:
            dec = self._cipher_cls(alg, self._gcm_cls(self.nonce(mtype, seq, epoch),
                                                      tag)).decryptor()
            dec.authenticate_additional_data(self.aad(mtype, seq, n, epoch))
            off = 0
            for p in pieces:  # one call per 64 KiB stored block
                if off + len(p) > n:
                    if off >= n:
                        break
                    p = p[: n - off]  # without the tag's bytes
                dec.update_into(p, out[off:])
                off += len(p)
            dec.finalize()
        except _invalid_tag():
            raise IntegrityError(f"{where}: authentication failed (ciphertext, tag or header "
                                 "altered)", chunk=chunk, part=part) from None
        return out[:n]

    def close(self) -> None:
        """Drop the engines and zero the data key (the cipher cannot be used after)."""
        with self._lock:
            self._gcm = self._aead = self._alg = None
            _zero(self._dk)


_buffers = threading.local()


def _plain_buffer(n: int) -> memoryview:
    """This thread's buffer for opened plaintext, at least `n` bytes (grown by doubling:
    reused from member to member, so no fresh zeroed pages per chunk)."""
    buf: memoryview | None = getattr(_buffers, "plain", None)
    if buf is None or len(buf) < n:
        buf = _buffers.plain = memoryview(bytearray(max(n, 2 * len(buf) if buf else 0)))
    return buf


def _last_bytes(pieces: list[memoryview], k: int) -> list[memoryview]:
    """The last `k` bytes of the concatenation of `pieces`, as views (the tag may straddle
    two stored blocks)."""
    out: list[memoryview] = []
    for p in reversed(pieces):
        if len(p) >= k:
            out.append(p[len(p) - k:])
            break
        out.append(p)
        k -= len(p)
    return out[::-1]


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag


def _key_check(dk: bytearray | memoryview) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=8, salt=None,
                info=CHECK_INFO).derive(dk).hex()


def new_archive_key(material: KeyMaterial, version: int,
                    kdf: dict[str, Any] | None = None) -> tuple[bytes, ArchiveCipher]:
    """A new data key wrapped under `material`: (key header JSON, cipher). `kdf`: reuse a
    parent's scrypt salt and parameters (one derivation unlocks the chain)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    archive_id = _random(ID_BYTES)
    dk = secret_buffer(_random(KEY_BYTES))
    try:
        kdf = dict(kdf) if kdf is not None else material.new_kdf()
        kek = material.kek(kdf, "new archive")
        wrap_nonce = _random(NONCE_BYTES)
        wrapped = AESGCM(kek).encrypt(wrap_nonce, dk, WRAP_AAD + archive_id)
        header = {"format": "dsbackup-key", "version": 1, "cipher": "aes-256-gcm",
                  "archive_id": archive_id.hex(), "kdf": kdf,
                  "wrapped_key": (wrap_nonce + wrapped).hex(), "key_check": _key_check(dk)}
        data = json.dumps(header, sort_keys=True).encode()
        return data, ArchiveCipher(archive_id, dk, version)
    finally:
        _zero(dk)


class PendingKey:
    """``new_archive_key`` run in a thread, and the cipher made ready to seal (its native
    key made, the sealing module loaded): a writer starts it before its scan, which starts
    meanwhile (the `cryptography` import, the key wrap and, for a passphrase, scrypt, which
    releases the GIL, no longer come before the first chunk). The key material, the data key
    and the cipher stay in this process, as with a direct call."""

    def __init__(self, material: KeyMaterial, version: int,
                 kdf: dict[str, Any] | None = None) -> None:
        self._args = (material, version, kdf)
        self._result: tuple[bytes, ArchiveCipher] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dsbackup-key", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            header, cipher = new_archive_key(*self._args)
            cipher.prepare()
            self._result = header, cipher
        except BaseException as exc:  # noqa: BLE001 - raised by result()
            self._error = exc

    def result(self) -> tuple[bytes, ArchiveCipher]:
        """(key header JSON, cipher), as new_archive_key; its error raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Wait for the thread and zero the data key it made (the writer stopped first)."""
        self._thread.join()
        if self._result is not None:
            self._result[1].close()
            self._result = None


def parse_key_header(data: bytes | memoryview, where: str) -> dict[str, Any]:
    """The key header's JSON, shape-checked (no key needed)."""
    try:
        h = json.loads(bytes(data))
    except (ValueError, RecursionError):  # RecursionError: nested too deeply (4 KiB of '[')
        raise IntegrityError(f"{where}: key header is not valid JSON", part="key") from None
    ok = (isinstance(h, dict) and h.get("format") == "dsbackup-key" and h.get("version") == 1
          and h.get("cipher") == "aes-256-gcm" and isinstance(h.get("kdf"), dict)
          and isinstance(h.get("archive_id"), str) and isinstance(h.get("wrapped_key"), str)
          and isinstance(h.get("key_check"), str))
    if not ok:
        raise IntegrityError(f"{where}: key header has an unknown shape", part="key")
    try:
        aid = bytes.fromhex(h["archive_id"])
        wrapped = bytes.fromhex(h["wrapped_key"])
        bytes.fromhex(h["key_check"])
    except ValueError:
        raise IntegrityError(f"{where}: key header holds invalid hex", part="key") from None
    if len(aid) != ID_BYTES or len(wrapped) != NONCE_BYTES + KEY_BYTES + TAG_BYTES:
        raise IntegrityError(f"{where}: key header field sizes are wrong", part="key")
    return h


def open_archive_key(header: dict[str, Any], material: KeyMaterial, version: int,
                     where: str) -> ArchiveCipher:
    """Unwrap the data key: WrongKeyError (exit 2) when the tag fails, in constant work
    (one KDF, one unwrap)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aid = bytes.fromhex(header["archive_id"])
    wrapped = bytes.fromhex(header["wrapped_key"])
    kek = material.kek(header["kdf"], where)
    try:
        dk = secret_buffer(AESGCM(kek).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:],
                                               WRAP_AAD + aid))
    except InvalidTag:
        raise WrongKeyError(f"{where}: {WRONG_KEY}") from None
    try:
        if _key_check(dk) != header["key_check"]:
            raise IntegrityError(f"{where}: key header's key_check does not match the "
                                 "unwrapped key", part="key")
        return ArchiveCipher(aid, dk, version)
    finally:
        _zero(dk)


# -- the key a process uses for the archives it reads or writes ------------------------------

class _KeyScope:
    """One ``using_key`` block: its material (the prompt's answer once asked) and prompt."""

    __slots__ = ("material", "prompt")

    def __init__(self, material: KeyMaterial | None,
                 prompt: Callable[[], KeyMaterial] | None) -> None:
        self.material, self.prompt = material, prompt


# the blocks open now: each thread's own, in order (what its readers use), and every thread's
# (what a thread that opened none uses: the readers a block's helper threads open). Per
# thread, so that concurrent backups with different keys (a scheduler's schedules, threads
# of an application) never read their archives with each other's key.
_scopes: list[_KeyScope] = []
_local = threading.local()
_current_lock = threading.RLock()


def _visible_scopes() -> list[_KeyScope]:
    mine = getattr(_local, "scopes", None)
    return list(mine) if mine else list(_scopes)


@contextmanager
def using_key(material: KeyMaterial | None, *,
              prompt: Callable[[], KeyMaterial] | None = None) -> Iterator[KeyMaterial | None]:
    """Make `material` the key of archives opened inside the block (None: keep the current);
    `prompt`: asked once, when an encrypted archive is opened without one (a terminal). The
    block is this thread's (and its helper threads', which opened no block of their own)."""
    if material is None and prompt is None:
        with _current_lock:
            current = _material_of(_visible_scopes())
        yield current
        return
    scope = _KeyScope(material, prompt)
    mine = _local.__dict__.setdefault("scopes", [])
    with _current_lock:
        _scopes.append(scope)
    mine.append(scope)
    try:
        yield material
    finally:
        mine.remove(scope)
        with _current_lock:
            _scopes[:] = [s for s in _scopes if s is not scope]


def _material_of(scopes: list[_KeyScope]) -> KeyMaterial | None:
    for scope in reversed(scopes):  # the innermost block that names a key
        if scope.material is not None:
            return scope.material
    return None


_must_be_encrypted: dict[str, str] = {}  # identity -> the key option given for it


@contextmanager
def expecting_encrypted(location: Any, option: str = "a key") -> Iterator[None]:
    """Inside the block, the archive at `location` (a path, ``s3://`` or ``-``; None: no
    effect) must be encrypted: a reader finding it plain raises PlainArchiveError (exit 2)
    naming `option`, what gave its key. A command given a key option for the archive it
    reads (restore, verify, ls, inspect, consolidate) would otherwise read a plain archive put
    in the encrypted one's place, exit 0. Its parents are not named: a plain parent of an
    encrypted incremental is allowed."""
    if location is None:
        yield
        return
    from dsbackup.storage import as_location, identity

    ident = identity(as_location(location))
    with _current_lock:
        before = _must_be_encrypted.get(ident)
        _must_be_encrypted[ident] = option
    try:
        yield
    finally:
        with _current_lock:
            if before is None:
                _must_be_encrypted.pop(ident, None)
            else:
                _must_be_encrypted[ident] = before


def refuse_plain(ident: str, where: str) -> None:
    """PlainArchiveError (exit 2) when the archive at identity `ident`, found not
    encrypted, was given a key option (``expecting_encrypted``)."""
    option = _must_be_encrypted.get(ident) if _must_be_encrypted else None
    if option is not None:
        raise PlainArchiveError.given(where, option)


_keyring: list[KeyMaterial] = []


def add_to_keyring(material: KeyMaterial) -> None:
    """A long-running process (the scheduler) registers the key material of its schedules:
    readers opened without a key try each, in order, and stop at the first that unwraps."""
    with _current_lock:
        if material not in _keyring:
            _keyring.append(material)


def key_candidates() -> list[KeyMaterial]:
    """What a reader without an explicit key tries: this thread's ``using_key`` key; in a
    thread that opened no block, the keys of the blocks open in other threads (innermost
    first: a block's helper threads), then the keyring (a scheduler reading one schedule's
    archive while another schedule's backup holds its block)."""
    k = current_key()
    with _current_lock:
        if k is not None and getattr(_local, "scopes", None):
            return [k]
        out = [k] if k is not None else []
        for m in [s.material for s in reversed(_scopes)] + _keyring:
            if m is not None and all(m is not o for o in out):
                out.append(m)
        return out


def current_key() -> KeyMaterial | None:
    """The key of ``using_key``, asking its prompt the first time one is needed."""
    with _current_lock:
        scopes = _visible_scopes()
        material = _material_of(scopes)
        if material is None:
            for scope in reversed(scopes):  # the innermost prompt, asked once
                if scope.prompt is not None:
                    scope.material = material = scope.prompt()
                    break
        return material
