"""Golden archives: the backup engine writes, byte for byte, the archives committed in
tests/fixtures/golden/ (built by tests/support/golden.py before the engine was refactored).

Every byte is compared, the manifest's `created`, the tar mtimes and the summary's timings
included: the generator freezes the clock and the process statistics (see
tests/support/golden_clock/sitecustomize.py). One field is inherently timing-dependent: the
parallel scan's summary `spilled_chunks` (how many finished chunks waited in the spill file
because the writer had not yet taken them). For that archive every byte before the summary
member is compared, then the summary without that field, then the trailer's other fields.
A difference is a change of the archives the engine writes; regenerate the fixtures only when
that change is meant (docs/FORMAT.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.golden import ARCHIVES, FIXTURE_DIR, RAW_KEY, build


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("golden") / "out"
    out.mkdir()
    build(out)
    return out


def _describe(path: Path) -> dict:
    """The manifest and summary, for a readable message when bytes differ."""
    from dsbackup.archive.crypto import KeyMaterial
    from dsbackup.archive.reader import ArchiveReader

    try:
        with ArchiveReader(path, parent_dirs=[path.parent], key=KeyMaterial(key=RAW_KEY)) as r:
            return {"manifest": r.manifest, "summary": r.summary}
    except Exception as exc:  # the Go format, or an archive the reader refuses
        return {"unreadable": str(exc)}


TIMING_FIELDS = {"full-parallel.tar.gz": {"spilled_chunks"}}


def _without_timing(path: Path, fields: set[str]) -> tuple[int, dict, tuple]:
    """(summary offset, summary without `fields`, the trailer's other fields)."""
    from dsbackup.archive.reader import ArchiveReader

    with ArchiveReader(path) as r:
        t = r.trailer
        summary = {k: v for k, v in r.summary.items() if k not in fields}
        return t.summary_offset, summary, (t.index_offset, t.index_length, t.index_xxh3)


@pytest.mark.parametrize("name", ARCHIVES)
def test_archive_is_byte_identical(rebuilt, name):
    want = (FIXTURE_DIR / name).read_bytes()
    got = (rebuilt / name).read_bytes()
    if name in TIMING_FIELDS and got != want:
        fields = TIMING_FIELDS[name]
        got_at, got_summary, got_trailer = _without_timing(rebuilt / name, fields)
        want_at, want_summary, want_trailer = _without_timing(FIXTURE_DIR / name, fields)
        assert got_at == want_at and got[:got_at] == want[:want_at], \
            f"{name}: differs before its summary"
        assert got_summary == want_summary
        assert got_trailer == want_trailer
        return
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b),
                  min(len(got), len(want)))
        pytest.fail(f"{name}: {len(got)} bytes written, {len(want)} golden; first difference "
                    f"at offset {at}\nwritten: {json.dumps(_describe(rebuilt / name))[:2000]}"
                    f"\ngolden:  {json.dumps(_describe(FIXTURE_DIR / name))[:2000]}")


def test_fixture_set_is_complete_and_small():
    committed = sorted(p.name for p in FIXTURE_DIR.glob("*.tar.gz"))
    assert committed == sorted(ARCHIVES)
    assert sum((FIXTURE_DIR / n).stat().st_size for n in ARCHIVES) < 1_500_000


def test_golden_incrementals_reference_their_parents():
    """The fixtures exercise both policies: chunks stored and chunks referenced."""
    from dsbackup.archive.crypto import KeyMaterial
    from dsbackup.archive.reader import ArchiveReader

    for name in ("incr.tar.gz", "incr-object.tar.gz", "incr-catalog.tar.gz",
                 "enc-incr.tar.gz", "flatfs-incr.tar.gz"):
        with ArchiveReader(FIXTURE_DIR / name, key=KeyMaterial(key=RAW_KEY)) as r:
            assert r.summary["referenced_chunks"] > 0, name
            assert r.summary["stored_chunks"] > 0, name
