"""Chunk codecs (docs/FORMAT.md §11.6): ``gzip`` (deflate, the default) or ``zstd``.

The compression functions (dsbackup._ext.compress.deflate_body, the native chunkers) take one
int for a chunk, its *chunk level*: a deflate level 0..9, or ZSTD_STORED + L (a zstd frame of
level L in stored blocks: an unencrypted archive's chunk body) or ZSTD_FRAME + L (the bare
frame, sealed in an encrypted archive), or DEFLATE_SEALED + L (deflate level L without the
CRC-32 of the gzip member trailer: an encrypted archive's member CRC covers the ciphertext,
docs/FORMAT.md §11.4, so the plaintext's is never used; such a body must never be the body of
an unencrypted archive's member, and the writer refuses it there). Catalogs and the other
members stay deflate.
"""

from __future__ import annotations

GZIP = "gzip"
ZSTD = "zstd"
CODECS = (GZIP, ZSTD)
DEFAULT_CODEC = GZIP
DEFAULT_LEVEL = {GZIP: 1, ZSTD: 1}
LEVELS = {GZIP: (0, 9), ZSTD: (1, 19)}
ZSTD_STORED = 100  # = DS_ZSTD_STORED in ext/compress.pxd
ZSTD_FRAME = 200  # = DS_ZSTD_FRAME
DEFLATE_SEALED = 300  # = DS_DEFLATE_SEALED
# dsbackup._ext.compress.Body.codec of a chunk body
BODY_DEFLATE, BODY_ZSTD_STORED, BODY_ZSTD_FRAME, BODY_DEFLATE_SEALED = 0, 1, 2, 3


def check_codec(codec: object) -> str:
    """`codec` when it is a known codec name, else ValueError (one line)."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    return codec  # type: ignore[return-value]


def check_level(codec: str, level: object) -> int:
    """`level` when it is valid for `codec`, else ValueError (one line)."""
    lo, hi = LEVELS[check_codec(codec)]
    if isinstance(level, bool) or not isinstance(level, int) or not lo <= level <= hi:
        raise ValueError(f"compression level for {codec} must be {lo}-{hi}, got {level!r}")
    return level


def chunk_level(codec: str, level: int, sealed: bool = False) -> int:
    """The chunk level of `codec` at `level` (`sealed`: the chunk is encrypted after)."""
    check_level(codec, level)
    if codec == GZIP:
        return DEFLATE_SEALED + level if sealed else level
    return (ZSTD_FRAME if sealed else ZSTD_STORED) + level


def deflate_level(chunk_lvl: int) -> int:
    """The deflate level of the members that stay deflate (catalogs) for a chunk level."""
    if chunk_lvl >= DEFLATE_SEALED:
        return chunk_lvl - DEFLATE_SEALED
    return chunk_lvl if chunk_lvl < ZSTD_STORED else DEFAULT_LEVEL[GZIP]


def is_zstd(chunk_lvl: int) -> bool:
    """Whether a chunk level gives zstd chunks."""
    return ZSTD_STORED <= chunk_lvl < DEFLATE_SEALED


def body_codec(chunk_lvl: int) -> int:
    """The Body.codec a chunk level gives."""
    if chunk_lvl >= DEFLATE_SEALED:
        return BODY_DEFLATE_SEALED
    if chunk_lvl < ZSTD_STORED:
        return BODY_DEFLATE
    return BODY_ZSTD_STORED if chunk_lvl < ZSTD_FRAME else BODY_ZSTD_FRAME
