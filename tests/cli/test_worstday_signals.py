"""SIGTERM and SIGHUP stop every command as Ctrl-C does: exit 130, temp files removed.

consolidate, verify, ls ... had no handler: SIGTERM killed them where they stood (exit 143, a
consolidate's temp file left beside OUT); SIGHUP (a closed terminal, a dropped ssh session)
did that to a backup and a restore too. Under ``nohup`` (SIGHUP ignored) a backup runs on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsbackup import datasets


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> Path:
    """An archive large enough (~48 MiB, stored) that a command on it runs for a while."""
    w = tmp_path_factory.mktemp("sig")
    datasets.write_lmdb(str(w / "s"), ((b"/k%06d" % i, os.urandom(1200)) for i in range(40000)))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    r = subprocess.run([sys.executable, "-m", "dsbackup", "backup", f"lmdb:{w / 's'}",
                        str(w / "a.tar.gz"), "--level", "0"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return w


def _signal_once_temp_exists(argv: list[str], env: dict, d: Path, name: str, sig: int,
                             prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    p = subprocess.Popen([*(prefix or []), sys.executable, "-m", "dsbackup", *argv], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(n.startswith(f".{name}.tmp-") for n in os.listdir(d)):
        assert p.poll() is None, p.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.002)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, p.returncode, "", err)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_consolidate_stopped_by_a_signal_leaves_nothing(large, cli_env, sig):
    r = _signal_once_temp_exists(["consolidate", str(large / "a.tar.gz"),
                                  str(large / "c.tar.gz")], cli_env, large, "c.tar.gz", sig)
    assert r.returncode == 130 and "Traceback" not in r.stderr, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines()[-1] == "dsbackup: interrupted"
    assert sorted(n for n in os.listdir(large) if n.startswith((".c.", "c."))) == []


def test_backup_stopped_by_sighup_is_cancelled_cleanly(large, cli_env):
    r = _signal_once_temp_exists(["backup", f"lmdb:{large / 's'}", str(large / "b.tar.gz"),
                                  "--level", "0"], cli_env, large, "b.tar.gz", signal.SIGHUP)
    assert r.returncode == 130 and "backup cancelled" in r.stderr, (r.returncode, r.stderr)
    assert sorted(n for n in os.listdir(large) if "b.tar.gz" in n) == []


def test_verify_stopped_by_sigterm_is_exit_130(large, cli_env):
    p = subprocess.Popen([sys.executable, "-m", "dsbackup", "verify", str(large / "a.tar.gz"),
                          "--workers", "1"], env=cli_env, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # in the middle of its imports or its reads: either way exit 130
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=120)[1]
    assert p.returncode in (130, 0), err  # 0: it finished first (a fast machine)
    assert "Traceback" not in err


def test_a_backup_under_nohup_outlives_sighup(large, cli_env):
    if not os.path.exists("/usr/bin/nohup"):
        pytest.skip("no nohup")
    r = _signal_once_temp_exists(["backup", f"lmdb:{large / 's'}", str(large / "n.tar.gz"),
                                  "--level", "0"], cli_env, large, "n.tar.gz", signal.SIGHUP,
                                 prefix=["/usr/bin/nohup"])
    assert r.returncode == 0, r.stderr
    assert (large / "n.tar.gz").is_file()
