"""Every parent reference of an archive checked in bulk, as numpy arrays (docs/FORMAT.md §10).

:meth:`ParentChain.locate <dsbackup.archive.chain.ParentChain.locate>` follows one reference
down the chain, comparing the entries hop by hop (record count, payload length and XXH3, key
digest, first and last key). :func:`suspect_references` does the same for all references at
once, a page of the archive's index against the parent pages it refers to, with no Python
object per entry, and returns the references that do not pass. A caller then runs ``locate``
on those (it raises the exact error), so the check is ``locate``'s, not a weaker one: a
reference passes here only when ``locate`` would pass it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dsbackup.archive.index import FLAG_PARENT
from dsbackup.errors import IntegrityError

BATCH_ROWS = 8192  # references compared at once (bounded temporaries)
_FIELDS = ("records", "payload_len", "payload_xxh3", "keys_xxh3", "first_len", "last_len")


def suspect_references(reader: Any, levels: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(stored, suspects): the seqs (int64, increasing) of the chunks `reader` stores, and of
    its references that do not resolve through `levels` (``levels[0]`` the parent, ...) to
    equal entries or whose check could not be made here (a damaged parent page, keys out of
    bounds): the ones ``locate`` must judge. One pass over the reader's index."""
    stored: list[np.ndarray] = []
    out: list[np.ndarray] = []
    for first, tab, keys in reader.index.blocks():
        is_ref = (tab["flags"] & np.uint32(FLAG_PARENT)) != 0
        stored.append(np.flatnonzero(~is_ref).astype(np.int64) + first)
        refs = np.flatnonzero(is_ref)
        for lo in range(0, refs.size, BATCH_ROWS):
            rows = refs[lo:lo + BATCH_ROWS]
            bad = _unresolved(tab[rows], keys, levels)
            out.append(rows[bad].astype(np.int64) + first)
    empty = np.empty(0, np.int64)
    return (np.concatenate(stored) if stored else empty,
            np.concatenate(out) if out else empty)


def _unresolved(rows: np.ndarray, keys: np.ndarray, levels: Sequence[Any]) -> np.ndarray:
    """Mask of `rows` (reference entries; `keys` their blob, in bounds: the archive's layout
    was checked) whose walk down `levels` fails or cannot be checked here."""
    n = len(rows)
    bad = np.zeros(n, bool)
    own = {f: rows[f] for f in _FIELDS}
    own_keys = _gather(keys, rows["keys_off"], rows["first_len"], rows["last_len"])
    live = np.arange(n)  # rows still walking down the chain
    target = rows["offset"]  # their seq in the level below (u64)
    for p in levels:
        if not live.size:
            break
        over = target >= np.uint64(p.chunk_count)
        bad[live[over]] = True
        live, target = live[~over], target[~over].astype(np.int64)
        order = np.argsort(target, kind="stable")
        live, target = live[order], target[order]
        nxt_live: list[np.ndarray] = []
        nxt_target: list[np.ndarray] = []
        pos = 0
        while pos < live.size:
            try:
                first, tab, pkeys = p.index.block(int(target[pos]))
            except IntegrityError:  # a damaged page: locate raises its error
                first, tab, pkeys = int(target[pos]), None, None
            stop = int(np.searchsorted(target, first + (1 if tab is None else len(tab))))
            sel, seqs = live[pos:stop], target[pos:stop]
            pos = stop
            if tab is None:
                bad[sel] = True
                continue
            pe = tab[seqs - first]
            ok = np.ones(sel.size, bool)
            for f in _FIELDS:
                ok &= pe[f] == own[f][sel]
            koff, flen, llen = pe["keys_off"], pe["first_len"], pe["last_len"]
            klen = np.uint64(pkeys.size)  # in bounds, without u64 overflow (as _decode)
            ok &= (koff <= klen) & (flen.astype(np.uint64) + llen <= klen - np.minimum(koff,
                                                                                      klen))
            ok[ok] = _same_keys(own_keys, sel[ok], pkeys, pe[ok])
            bad[sel[~ok]] = True
            deeper = ok & ((pe["flags"] & np.uint32(FLAG_PARENT)) != 0)
            nxt_live.append(sel[deeper])
            nxt_target.append(pe["offset"][deeper])
        live = np.concatenate(nxt_live) if nxt_live else np.empty(0, np.int64)
        target = np.concatenate(nxt_target) if nxt_target else np.empty(0, np.uint64)
    bad[live] = True  # still a reference below the last level: the chain is too short
    return bad


class _Keys:
    """The first and last keys of some entries, concatenated (uint8), and where each starts."""

    __slots__ = ("data", "starts", "lens")

    def __init__(self, data: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> None:
        self.data, self.starts, self.lens = data, starts, lens


def _gather(blob: np.ndarray, koff: np.ndarray, flen: np.ndarray, llen: np.ndarray) -> _Keys:
    """blob[koff[j] : koff[j] + flen[j] + llen[j]] of every j (the first key, then the last:
    §5 stores them so), concatenated."""
    lens = flen.astype(np.int64) + llen.astype(np.int64)
    starts = np.cumsum(lens) - lens
    idx = np.repeat(koff.astype(np.int64) - starts, lens) + np.arange(int(lens.sum()))
    return _Keys(blob[idx], starts, lens)


def _same_keys(own: _Keys, sel: np.ndarray, pkeys: np.ndarray, pe: np.ndarray) -> np.ndarray:
    """Per row: whether the keys of own row sel[j] equal parent entry pe[j]'s (same lengths
    already checked, parent offsets in bounds)."""
    if not sel.size:
        return np.ones(0, bool)
    lens = own.lens[sel]
    idx = np.repeat(own.starts[sel] - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
    theirs = _gather(pkeys, pe["keys_off"], pe["first_len"], pe["last_len"])
    differ = own.data[idx] != theirs.data
    row = np.repeat(np.arange(sel.size), lens)
    return np.bincount(row[differ], minlength=sel.size) == 0
