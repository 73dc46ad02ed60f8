"""Holds on a running backup's parent chain (dsbackup/storage/holds.py): locked while the
holder lives, seen by another process; a killed holder's hold keeps nothing and is removed by
the next holder there unless its backup's temp file is left for `backup --resume`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from dsbackup.storage.holds import hold_chain, holds_in, remove_dead_holds

_HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from dsbackup.storage.holds import hold_chain
    h = hold_chain([Path(sys.argv[1])], Path(sys.argv[2]))
    print("held", flush=True)
    sys.stdin.read()
    h.release()
""")


def _holder(cli_env, archive: Path, child: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(archive), str(child)],
                         env=cli_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_hold_is_live_while_its_holder_runs_and_gone_after(tmp_path, cli_env):
    a = tmp_path / "A"
    a.mkdir()
    (a / "x.tar.gz").write_bytes(b"x")
    p = _holder(cli_env, a / "x.tar.gz", tmp_path / "B" / "y.tar.gz")
    [h] = holds_in(a)
    assert (h.archive, h.child, h.pid, h.live) == ("x.tar.gz", str(tmp_path / "B/y.tar.gz"),
                                                   p.pid, True)
    remove_dead_holds(a)  # a live hold stays
    assert holds_in(a) == [h]
    p.stdin.close()
    assert p.wait(timeout=60) == 0
    assert holds_in(a) == []  # released: removed


def test_a_killed_holder_s_hold_is_dead_and_removed_unless_its_temp_file_is_left(tmp_path,
                                                                                 cli_env):
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    (a / "x.tar.gz").write_bytes(b"x")
    p = _holder(cli_env, a / "x.tar.gz", b / "y.tar.gz")
    p.send_signal(signal.SIGKILL)
    p.wait()
    [h] = holds_in(a)
    assert not h.live and h.child == str(b / "y.tar.gz")
    left = b / ".y.tar.gz.tmp-1-0123456789ab"
    left.write_bytes(b"")
    remove_dead_holds(a)  # its backup's temp file is there: kept (it names the leftover)
    assert holds_in(a) == [h]
    left.unlink()
    remove_dead_holds(a)
    assert holds_in(a) == []


def test_a_symlinked_parent_is_held_at_its_link_and_its_file(tmp_path):
    real, links = tmp_path / "real", tmp_path / "links"
    real.mkdir()
    links.mkdir()
    (real / "x.tar.gz").write_bytes(b"x")
    (links / "x.tar.gz").symlink_to(real / "x.tar.gz")
    with hold_chain([links / "x.tar.gz"], tmp_path / "y.tar.gz") as h:
        assert len(h.paths) == 2
        assert [x.archive for x in holds_in(real)] == [x.archive for x in holds_in(links)] \
            == ["x.tar.gz"]
        assert all(x.live for x in holds_in(real) + holds_in(links))
    assert holds_in(real) == holds_in(links) == []
    assert sorted(os.listdir(real)) == ["x.tar.gz"]


def test_a_hold_names_its_child_by_absolute_path(tmp_path, monkeypatch):
    """A backup given a relative path (`backup S B/y.tar.gz`): its hold names the archive by
    its absolute path, which a prune run from another directory can find (its temp file)."""
    (tmp_path / "x.tar.gz").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    with hold_chain([Path("x.tar.gz")], Path("B") / "y.tar.gz"):
        [h] = holds_in(tmp_path)
        assert h.child == str(tmp_path / "B" / "y.tar.gz")
