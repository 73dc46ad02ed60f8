"""Arithmetic on byte-string keys: numeric midpoints for splitting a key range."""

from __future__ import annotations


def midpoint(lo: bytes, hi: bytes, fraction: float = 0.5) -> bytes:
    """A key between lo and hi (bytewise order), `fraction` of the way from lo to hi.

    Keys are read as big-endian numbers over a common width (shorter keys right-padded with
    zeros, which keeps their order); trailing zero bytes of the result are dropped.
    """
    width = max(len(lo), len(hi)) + 1
    a = int.from_bytes(lo.ljust(width, b"\0"), "big")
    b = int.from_bytes(hi.ljust(width, b"\0"), "big")
    if b <= a:
        return lo
    m = a + max(1, int((b - a) * fraction))
    out = m.to_bytes(width, "big").rstrip(b"\0")
    return out or b"\0"
