"""The glob dialect: docs/PATTERNS.md's example tables are the test vectors, checked against the
native matcher and through every command that takes patterns (backup --exclude, restore
--pattern, migration filters), in process for every row and once per command as a subprocess."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dsbackup._ext.framing import KeyMatcher
from dsbackup.datastores import open_datastore
from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig
from dsbackup.engine.restore import restore_archive
from dsbackup.errors import ConfigError
from dsbackup.keys import children_range
from dsbackup.migration.plan import FilterConfig
from dsbackup.patterns import key_matcher

DOC = Path(__file__).resolve().parents[1] / "docs" / "PATTERNS.md"


def _table(header: list[str]) -> list[list[str]]:
    """The rows of the doc's markdown table with this header."""
    rows: list[list[str]] | None = None
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if rows is not None:
            if not line.startswith("|"):
                break
            if not all(re.fullmatch(r"-+", c) for c in cells):
                rows.append(cells)
        elif line.startswith("|") and cells == header:
            rows = []
    assert rows, f"no table {header} in {DOC}"
    return rows


def _code(cell: str) -> str:
    m = re.fullmatch(r"`([^`]+)`", cell)
    assert m, f"not a code span: {cell!r}"
    return m.group(1)


def _vectors() -> list[tuple[str, bytes, bool]]:
    out = []
    for pattern, key, match, _why in _table(["Pattern", "Key", "Match", "Why"]):
        assert match in ("yes", "no"), match
        out.append((_code(pattern), _code(key).encode(), match == "yes"))
    return out


def _bad_patterns() -> list[tuple[str, str]]:
    return [(_code(p), err) for p, err in _table(["Pattern", "Error"])]


VECTORS = _vectors()
PATTERNS = sorted({p for p, _, _ in VECTORS})
KEYS = sorted({k for _, k, _ in VECTORS})


def _expected(pattern: str) -> dict[bytes, bool]:
    return {k: m for p, k, m in VECTORS if p == pattern}


def test_the_doc_tables_parse() -> None:
    assert len(VECTORS) >= 30 and len(PATTERNS) >= 15
    assert any(m for _, _, m in VECTORS) and any(not m for _, _, m in VECTORS)
    assert len(_bad_patterns()) >= 5


@pytest.mark.parametrize("pattern,key,match", VECTORS)
def test_native_matcher(pattern: str, key: bytes, match: bool) -> None:
    assert KeyMatcher([pattern]).match(key) is match
    m = key_matcher([pattern])
    assert m is not None and m.match(key) is match


@pytest.mark.parametrize("pattern,error", _bad_patterns())
def test_bad_patterns_are_config_errors(pattern: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        KeyMatcher([pattern])
    with pytest.raises(ConfigError, match="--exclude: .*" + re.escape(error)):
        key_matcher([pattern], "--exclude")
    with pytest.raises(ConfigError, match=re.escape(error)):
        BackupConfig(exclude_patterns=[pattern])
    with pytest.raises(ConfigError, match=re.escape(error)):
        FilterConfig(key_patterns=[pattern]).compile()


def _store(keys: list[bytes]):
    ds = open_datastore("memory:")
    ds.put_many(keys, [b"v" + k for k in keys])
    return ds


def _keys(ds) -> list[bytes]:
    return [k for keys, _ in ds.scan_batches() for k in keys]


@pytest.fixture(scope="module")
def full_archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("patterns") / "all.tar.gz"
    BackupManager(BackupConfig(chunk_size=3, workers=1)).create_backup(_store(KEYS), path)
    return path


@pytest.mark.parametrize("pattern", PATTERNS)
def test_backup_exclude(tmp_path: Path, pattern: str) -> None:
    archive = tmp_path / "a.tar.gz"
    meta = BackupManager(BackupConfig(exclude_patterns=[pattern], chunk_size=3, workers=1)
                         ).create_backup(_store(KEYS), archive)
    target = open_datastore("memory:")
    restore_archive(archive, target)
    kept = set(_keys(target))
    for key, match in _expected(pattern).items():
        assert (key not in kept) is match, (pattern, key)
    assert meta.statistics.skipped_keys == len(KEYS) - len(kept)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_restore_pattern(full_archive: Path, pattern: str) -> None:
    target = open_datastore("memory:")
    restore_archive(full_archive, target, pattern=[pattern])
    restored = set(_keys(target))
    for key, match in _expected(pattern).items():
        assert (key in restored) is match, (pattern, key)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_migration_filters(pattern: str) -> None:
    values = [b"v"] * len(KEYS)
    kept = set(FilterConfig(key_patterns=[pattern]).compile().select(KEYS, values)[0])
    dropped = set(KEYS) - set(FilterConfig(exclude_patterns=[pattern]).compile()
                              .select(KEYS, values)[0])
    for key, match in _expected(pattern).items():
        assert (key in kept) is match, (pattern, key)
        assert (key in dropped) is match, (pattern, key)


def test_children_range() -> None:
    assert children_range("/foo") == (b"/foo/", b"/foo0")
    assert children_range(b"/foo/") == (b"/foo/", b"/foo0")
    assert children_range("/") == (b"", None) and children_range(None) == (b"", None)
    start, end = children_range("/foo")
    inside = [k for k in (b"/foo", b"/foo/bar", b"/foo/bar/baz", b"/foobar", b"/foo0")
              if start <= k < end]
    assert inside == [b"/foo/bar", b"/foo/bar/baz"]


# -- the commands as subprocesses, one table pattern each ----------------------------------

CLI_PATTERN = "/a/**/b"


def _sqlite(tmp_path: Path, name: str, keys: list[bytes]) -> str:
    uri = f"sqlite:{tmp_path / name}"
    ds = open_datastore(uri)
    if keys:
        ds.put_many(keys, [b"v" + k for k in keys])
    ds.close()
    return uri


def _uri_keys(uri: str) -> set[bytes]:
    ds = open_datastore(uri, readonly=True)
    try:
        return set(_keys(ds))
    finally:
        ds.close()


def test_cli_backup_exclude_and_restore_pattern(tmp_path: Path, run_cli) -> None:
    expected = _expected(CLI_PATTERN)
    src = _sqlite(tmp_path, "src.db", KEYS)
    archive = tmp_path / "a.tar.gz"
    p = run_cli("backup", src, archive, "--exclude", CLI_PATTERN)
    assert p.returncode == 0, p.stderr
    dst = f"sqlite:{tmp_path / 'dst.db'}"
    p = run_cli("restore", archive, dst)
    assert p.returncode == 0, p.stderr
    kept = _uri_keys(dst)
    assert {k for k, m in expected.items() if m} & kept == set()
    assert {k for k, m in expected.items() if not m} <= kept

    full = tmp_path / "full.tar.gz"
    assert run_cli("backup", src, full).returncode == 0
    sel = f"sqlite:{tmp_path / 'sel.db'}"
    p = run_cli("restore", full, sel, "--pattern", CLI_PATTERN)
    assert p.returncode == 0, p.stderr
    assert _uri_keys(sel) == {k for k in KEYS if KeyMatcher([CLI_PATTERN]).match(k)}
    assert {k for k, m in expected.items() if m} <= _uri_keys(sel)


def test_cli_bad_pattern_exits_2(tmp_path: Path, run_cli) -> None:
    src = _sqlite(tmp_path, "src.db", KEYS)
    p = run_cli("backup", src, tmp_path / "a.tar.gz", "--exclude", "/[abc")
    assert p.returncode == 2 and "unterminated '['" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "a.tar.gz").exists()


def test_cli_migrate_key_patterns(tmp_path: Path, run_cli) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(f"""id = "patterns"
version = "1"

[[steps]]
id = "copy"
type = "copy"
filters = {{ key_patterns = ["{CLI_PATTERN}"] }}
""")
    src = _sqlite(tmp_path, "src.db", KEYS)
    dst = _sqlite(tmp_path, "dst.db", [])
    p = run_cli("migrate", plan, src, dst)
    assert p.returncode == 0, p.stderr
    copied = _uri_keys(dst)
    expected = _expected(CLI_PATTERN)
    assert {k for k, m in expected.items() if m} <= copied
    assert {k for k, m in expected.items() if not m} & copied == set()
