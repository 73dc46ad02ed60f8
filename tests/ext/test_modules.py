"""The native modules split out of framing and lmdbscan: every ext/*.pyx is a module that
imports, and the old homes re-export the moved names as the same objects."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from dsbackup._ext import framing, keymatch, lmdbregistry, lmdbscan, payload, planner

EXT = Path(__file__).resolve().parents[2] / "ext"


@pytest.mark.parametrize("pyx", sorted(p.stem for p in EXT.glob("*.pyx")))
def test_every_pyx_is_a_built_module(pyx: str) -> None:
    mod = importlib.import_module(f"dsbackup._ext.{pyx}")
    assert mod.__file__.endswith(".so")


def test_framing_reexports_the_split_modules() -> None:
    assert framing.KeyMatcher is keymatch.KeyMatcher
    assert framing.KeyPlanner is planner.KeyPlanner
    for name in ("FramingError", "PayloadInfo", "scan_payload", "decode_records",
                 "decode_keys_sizes", "encode_records"):
        assert getattr(framing, name) is getattr(payload, name), name


def test_lmdbscan_reexports_the_registry() -> None:
    for name in ("DoubleOpenError", "register_foreign_open", "unregister_foreign_open",
                 "open_environments"):
        assert getattr(lmdbscan, name) is getattr(lmdbregistry, name), name


def test_split_modules_work_together() -> None:
    # the chunker (framing) excludes with keymatch's matcher, and agrees with the planner
    keys = [b"/a/%03d" % i for i in range(200)]
    values = [b"v" * (i % 7) for i in range(200)]
    ex = keymatch.KeyMatcher(["/a/1*"])
    ch = framing.Chunker(7, 1 << 20, exclude=ex)
    chunks = ch.add(keys, values) + [ch.finish()]
    pl = planner.KeyPlanner(7, 1 << 20, ex)
    plans = pl.add(keys, [len(v) for v in values]) + [pl.finish()]
    assert [(c.first_key, c.last_key, c.record_count, c.payload_len, c.keys_xxh3, c.raw_bytes)
            for c in chunks] == plans
    assert ch.excluded_records == pl.excluded_records == 100
    got = [k for c in chunks for k in payload.decode_records(c.payload)[0]]
    assert got == [k for k in keys if not ex.match(k)]
