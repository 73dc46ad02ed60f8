"""`dsbackup ls` and `dsbackup inspect` on hostile archives: control characters in keys and
manifest strings are escaped on plain output, exact in --json (issue 20, item 13)."""

from __future__ import annotations

import json

from dsbackup import datasets
from dsbackup.archive.reader import ArchiveReader
from dsbackup.archive.writer import ArchiveWriter
from dsbackup.cli._common import unescape_key
from dsbackup.engine.backup import BackupManager

HOSTILE = [b"/pins/a\x1b]0;pwned\x07", b"/pins/b\rforged", b"/pins/c\\d", b"/pins/e\x9b"]


def _has_control(text: str) -> bool:
    return any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in text)


def test_ls_escapes_keys_and_json_keeps_them(tmp_path, run_cli):
    keys = sorted(HOSTILE + [b"/pins/plain"])
    datasets.write_lmdb(str(tmp_path / "s"), iter((k, b"v") for k in keys))
    archive = tmp_path / "a.tar.gz"
    BackupManager().create_backup(f"lmdb:{tmp_path / 's'}", archive)
    r = run_cli("ls", archive)
    assert r.returncode == 0, r.stderr
    assert not _has_control(r.stdout)
    lines = r.stdout.splitlines()
    assert len(lines) == len(keys)  # "\r" forged no line
    assert [unescape_key(ln) for ln in lines] == keys
    r = run_cli("ls", archive, "-l")
    assert not _has_control(r.stdout)
    assert [unescape_key(ln.split("  ")[-1]) for ln in r.stdout.splitlines()] == keys
    r = run_cli("ls", archive, "--json")
    shown = [json.loads(ln)["key"] for ln in r.stdout.splitlines()[1:]]
    # UTF-8 keys exactly as they are (JSON escapes the control characters itself)
    assert [k for k in shown if k != "/pins/e\\x9b"] == [k.decode() for k in keys
                                                         if k != b"/pins/e\x9b"]


def test_inspect_escapes_manifest_strings(tmp_path, run_cli):
    datasets.write_lmdb(str(tmp_path / "s"), iter([(b"/k", b"v")]))
    good = tmp_path / "good.tar.gz"
    BackupManager().create_backup(f"lmdb:{tmp_path / 's'}", good)
    with ArchiveReader(good) as r:
        manifest = dict(r.manifest)
    manifest["tool"] = "dsbackup\x1b]0;pwned\x07"
    manifest["source"] = dict(manifest["source"], uri="lmdb:/x\r\x1b[2Jforged")
    bad = tmp_path / "bad.tar.gz"
    with ArchiveWriter(bad, manifest=manifest) as w:
        w.finish()
    r = run_cli("inspect", bad)
    assert r.returncode == 0, r.stderr
    assert not _has_control(r.stdout)
    assert "dsbackup\\x1b]0;pwned\\x07" in r.stdout
    assert "lmdb:/x\\x0d\\x1b[2Jforged" in r.stdout
    r = run_cli("inspect", bad, "--json")
    info = json.loads(r.stdout)["backup"]
    assert info["tool"] == "dsbackup\x1b]0;pwned\x07"
