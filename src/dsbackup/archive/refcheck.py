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
    own_off = rows["keys_off"].astype(np.int64)  # in bounds: the layout was checked
    own_len = rows["first_len"].astype(np.int64) + rows["last_len"]
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
            ok[ok] = _same_keys(keys, own_off[sel[ok]], pkeys,
                                pe["keys_off"][ok].astype(np.int64), own_len[sel[ok]])
            bad[sel[~ok]] = True
            deeper = ok & ((pe["flags"] & np.uint32(FLAG_PARENT)) != 0)
            nxt_live.append(sel[deeper])
            nxt_target.append(pe["offset"][deeper])
        live = np.concatenate(nxt_live) if nxt_live else np.empty(0, np.int64)
        target = np.concatenate(nxt_target) if nxt_target else np.empty(0, np.uint64)
    bad[live] = True  # still a reference below the last level: the chain is too short
    return bad


def _same_keys(a: np.ndarray, a_off: np.ndarray, b: np.ndarray, b_off: np.ndarray,
               lens: np.ndarray) -> np.ndarray:
    """Per row j: whether a[a_off[j]:+lens[j]] == b[b_off[j]:+lens[j]] (a row's first and
    last key: §5 stores them one after the other). Consecutive entries usually lie one after
    another in both blobs: then one comparison of two slices answers for all of them."""
    n = lens.size
    if not n:
        return np.ones(0, bool)
    if _runs_on(a_off, lens) and _runs_on(b_off, lens):
        size = int(lens.sum())
        x, y = int(a_off[0]), int(b_off[0])
        if np.array_equal(a[x:x + size], b[y:y + size]):
            return np.ones(n, bool)
    starts = np.cumsum(lens) - lens  # row by row: gather both sides' bytes
    within = np.arange(int(lens.sum())) - np.repeat(starts, lens)
    differ = a[np.repeat(a_off, lens) + within] != b[np.repeat(b_off, lens) + within]
    row = np.repeat(np.arange(n), lens)
    return np.bincount(row[differ], minlength=n) == 0


def _runs_on(off: np.ndarray, lens: np.ndarray) -> bool:
    """Whether each row's bytes start where the previous row's end."""
    return bool((off[1:] == off[:-1] + lens[:-1]).all())


def resolved_references(reader: Any, levels: Sequence[Any]
                        ) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Where `reader`'s references lead: for each level k that stores some of them,
    (k, the seqs in ``levels[k]`` that store the chunks, increasing; the reader's seqs that
    refer to them, in the same order). The walk is locate's, in bulk, without its checks: run
    it on references that passed suspect_references (or locate). IntegrityError for a
    reference that leads past a level's end or below the last level."""
    own: list[np.ndarray] = []
    off: list[np.ndarray] = []
    for first, tab, _keys in reader.index.blocks():
        rows = np.flatnonzero((tab["flags"] & np.uint32(FLAG_PARENT)) != 0)
        own.append(rows.astype(np.int64) + first)
        off.append(tab["offset"][rows].astype(np.int64))
    live = np.concatenate(own) if own else np.empty(0, np.int64)
    target = np.concatenate(off) if off else np.empty(0, np.int64)
    out: list[tuple[int, np.ndarray, np.ndarray]] = []
    for k, p in enumerate(levels):
        if not live.size:
            break
        if int(target.max()) >= p.chunk_count or int(target.min()) < 0:
            raise IntegrityError(f"{reader.path}: a reference leads past the end of {p.path}")
        order = np.argsort(target, kind="stable")
        live, target = live[order], target[order]
        deeper = np.zeros(live.size, bool)
        nxt = np.zeros(live.size, np.int64)
        pos = 0
        while pos < live.size:
            first, tab, _keys = p.index.block(int(target[pos]))
            stop = int(np.searchsorted(target, first + len(tab)))
            pe = tab[target[pos:stop] - first]
            deeper[pos:stop] = (pe["flags"] & np.uint32(FLAG_PARENT)) != 0
            nxt[pos:stop] = pe["offset"].astype(np.int64)
            pos = stop
        if (~deeper).any():
            out.append((k, target[~deeper], live[~deeper]))
        live, target = live[deeper], nxt[deeper]
    if live.size:
        raise IntegrityError(f"{reader.path}: chunk {int(live[0])} still refers to a parent "
                             "below the last archive of its chain")
    return out
