"""archive/lineage.py: the walk down a chain by fingerprints shared by choose_parent and the
scheduler (the file-based helpers are tested with real archives in
tests/engine/test_incremental.py)."""

from __future__ import annotations

from dsbackup.archive.lineage import chain_depth


def test_a_full_backup_is_a_chain_of_one():
    assert chain_depth(None, {}, 5) == (1, None)


def test_the_walk_counts_ancestors_up_to_the_limit():
    parents = {"c": "b", "b": "a", "a": None}
    assert chain_depth("c", parents, 10) == (4, None)  # the archive, c, b, a
    assert chain_depth("c", parents, 2) == (2, "b")  # stopped by the limit
    assert chain_depth("c", parents, 1) == (1, "c")


def test_a_missing_ancestor_stops_the_walk_and_is_named():
    assert chain_depth("c", {"c": "gone"}, 10) == (2, "gone")


def test_a_temp_files_head_is_read_without_blocking_or_inflating_a_bomb(tmp_path, monkeypatch):
    """prune reads the manifest at the head of a live writer's temp file (_temp_parent). A
    FIFO put at that name blocked prune for ever (a blocking open waits for a writer); a head
    whose manifest member declares gigabytes was inflated whole (up to DEFLATE_MAX_RATIO times
    the 4 MiB read). Both are now refused with ValueError: every older archive is kept."""
    import os
    import signal
    import zlib

    import pytest

    from dsbackup._ext.checksum import xxh3_64
    from dsbackup.archive import format as fmt
    from dsbackup.archive import member
    from dsbackup.archive.lineage import _temp_parent

    fifo = tmp_path / ".a.tar.gz.tmp-1-0123456789ab"
    os.mkfifo(fifo)

    def hung(*_):
        raise TimeoutError("_temp_parent blocked on the FIFO")

    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with pytest.raises(ValueError, match="not a regular file"):
            _temp_parent(fifo)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)

    size = 1 << 30  # zeros: ~1 MiB of deflate
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = z.compress(bytes(1 << 20))
    for _ in range((fmt.TAR_BLOCK + size) >> 20):
        body += z.compress(bytes(1 << 20))
    body += z.flush()
    bomb = tmp_path / ".b.tar.gz.tmp-1-0123456789ab"
    bomb.write_bytes(fmt.member_head(fmt.data_subfield(fmt.TYPE_MANIFEST, size, xxh3_64(b"")))
                     + body)
    inflated: list[int] = []
    real = member.inflate_raw
    monkeypatch.setattr(member, "inflate_raw",
                        lambda d, a, b: (inflated.append(b), real(d, a, b))[1])
    with pytest.raises(ValueError, match="a manifest of"):
        _temp_parent(bomb)
    assert inflated == []


def test_a_manifest_nested_too_deep_is_unreadable_not_a_crash(tmp_path, monkeypatch):
    """A manifest of 100,000 nested lists (someone's file at a temp name, or a hostile
    archive) raised RecursionError out of json.loads, which neither _temp_parent's caller
    (prune, in_progress) nor read_lineage caught: prune died with a traceback. Now it is an
    unreadable manifest like any other (every older archive kept / the archive skipped)."""
    import json

    import pytest

    from dsbackup.archive import writer as writer_mod
    from dsbackup.archive.lineage import _temp_parent, read_lineage

    deep = b"[" * 100_000 + b"]" * 100_000
    monkeypatch.setattr(writer_mod.json, "dumps", lambda *a, **k: deep.decode())
    w = writer_mod.ArchiveWriter(tmp_path / "x.tar.gz", manifest={})
    monkeypatch.undo()
    with pytest.raises(ValueError, match="too deeply"):
        _temp_parent(w.tmp)
    w.finish({"fingerprint": "0" * 32})
    assert json.loads(b"[]") == []
    assert read_lineage([tmp_path / "x.tar.gz"]) == ([], [])
