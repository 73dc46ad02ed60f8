"""Golden archives: the backup engine writes, byte for byte, the archives committed in
tests/fixtures/golden/ (built by tests/support/golden.py before the engine was refactored).

Every byte is compared, the manifest's `created`, the tar mtimes and the summary's timings
included: the generator freezes the clock and the process statistics (see
tests/support/golden_clock/sitecustomize.py). A difference is a change of the archives the
engine writes; regenerate the fixtures only when that change is meant (docs/FORMAT.md)."""

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


@pytest.mark.parametrize("name", ARCHIVES)
def test_archive_is_byte_identical(rebuilt, name):
    want = (FIXTURE_DIR / name).read_bytes()
    got = (rebuilt / name).read_bytes()
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
