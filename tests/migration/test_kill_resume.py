"""A migration killed with SIGKILL at random points and resumed ends with exactly the target an
uninterrupted run gives; the source is unchanged unless the move step had started deleting."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsbackup.migration.journal import Journal

from .helpers import fill, kv_items, store_digest

PLAN = """
id = "kill-test"
version = "1"

[config]
batch_size = 200
checkpoint_interval = 0

[[steps]]
id = "copy"
type = "copy"
filters = { key_patterns = ["/a/**", "/b/**"] }
transform = { key_transform = "add_prefix:/x", value_transform = "gzip:1" }

[[steps]]
id = "rekey"
type = "transform"
source = "target"
target = "target"
transform = { key_transform = "remove_prefix:/x", value_transform = "gunzip" }

[[steps]]
id = "check"
type = "validate"
filters = { key_prefix = "/a" }

[[steps]]
id = "move"
type = "move"
filters = { key_prefix = "/m" }
"""
# a plain copy (the native LMDB copier's path) and the move
PLAN_NATIVE = """
id = "kill-test"
version = "1"

[config]
batch_size = 200
checkpoint_interval = 0

[[steps]]
id = "copy"
type = "copy"

[[steps]]
id = "check"
type = "validate"

[[steps]]
id = "noop"
type = "validate"
filters = { key_prefix = "/a" }

[[steps]]
id = "move"
type = "move"
filters = { key_prefix = "/m" }
"""
MOVE_STEP = 3
N_KEYS = 10_000


def _start(cli_env: dict[str, str], plan: Path, src: Path, dst: Path, *extra: str
           ) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "dsbackup", "migrate", str(plan),
                             f"lmdb:{src}", f"lmdb:{dst}", *extra],
                            env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _move_started(journal: Path) -> bool:
    if not journal.exists():
        return False
    st = Journal(journal).read()
    cp = st.checkpoint or {}
    return MOVE_STEP in st.steps_done or (cp.get("step") == MOVE_STEP
                                          and cp.get("phase") == "delete")


def _kill_and_resume(tmp_path: Path, cli_env: dict[str, str], points: int, seed: int,
                     plan_text: str = PLAN) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(plan_text)
    pristine = tmp_path / "pristine"
    fill(f"lmdb:{pristine}", kv_items(N_KEYS, seed=seed))
    src_digest = store_digest(f"lmdb:{pristine}")

    # the reference: one uninterrupted run, timed from journal creation to exit
    shutil.copytree(pristine, tmp_path / "ref-src")
    journal_ref = tmp_path / "ref-dst.dsmigrate" / "kill-test.journal"
    p = _start(cli_env, plan, tmp_path / "ref-src", tmp_path / "ref-dst")
    while not journal_ref.exists() and p.poll() is None:
        time.sleep(0.002)
    t0 = time.monotonic()
    _, err = p.communicate(timeout=300)
    work_s = time.monotonic() - t0
    assert p.returncode == 0, err.decode()
    want_dst = store_digest(f"lmdb:{tmp_path}/ref-dst")
    want_src = store_digest(f"lmdb:{tmp_path}/ref-src")
    assert want_src != src_digest  # the move took /m/* out of the source

    rnd = random.Random(seed)
    killed = 0
    for i in range(points):
        src, dst = tmp_path / f"src{i}", tmp_path / f"dst{i}"
        shutil.copytree(pristine, src)
        journal = tmp_path / f"dst{i}.dsmigrate" / "kill-test.journal"
        p = _start(cli_env, plan, src, dst)
        while not journal.exists() and p.poll() is None:
            time.sleep(0.002)
        t_journal = time.monotonic()
        time.sleep(rnd.uniform(0, work_s))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            killed += 1
        else:
            # it finished first: runs are faster than the reference was (warm caches), so
            # aim the next kills within the time this one took at most
            work_s = min(work_s, 0.8 * (time.monotonic() - t_journal))
        p.wait(timeout=60)
        if not _move_started(journal):
            assert store_digest(f"lmdb:{src}") == src_digest, f"kill point {i}"
        r = _start(cli_env, plan, src, dst, "--resume")
        _, err = r.communicate(timeout=300)
        assert r.returncode == 0, f"kill point {i}: {err.decode()}"
        assert store_digest(f"lmdb:{dst}") == want_dst, f"kill point {i}"
        assert store_digest(f"lmdb:{src}") == want_src, f"kill point {i}"
        assert (tmp_path / f"dst{i}.dsmigrate" / "kill-test.version").is_file()
        shutil.rmtree(src)
        shutil.rmtree(dst)
    assert killed >= points // 2, f"only {killed} of {points} runs were killed mid-way"


def test_sigkill_at_random_points_then_resume(tmp_path: Path, cli_env) -> None:
    _kill_and_resume(tmp_path, cli_env, points=6, seed=11)


def test_sigkill_during_native_lmdb_copy_then_resume(tmp_path: Path, cli_env) -> None:
    _kill_and_resume(tmp_path, cli_env, points=3, seed=13, plan_text=PLAN_NATIVE)


@pytest.mark.soak
def test_sigkill_at_20_random_points_then_resume(tmp_path: Path, cli_env) -> None:
    _kill_and_resume(tmp_path, cli_env, points=20, seed=12)


@pytest.mark.soak
def test_sigkill_at_20_random_points_native_copy_then_resume(tmp_path: Path, cli_env) -> None:
    _kill_and_resume(tmp_path, cli_env, points=20, seed=14, plan_text=PLAN_NATIVE)
