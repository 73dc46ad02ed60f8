"""A backup imports no numpy (docs/PERFORMANCE.md: its import is start-up time before the first
chunk, ~0.05-0.1 s on the 2-core VM): not through the writer's resume support (archive/resume.py
-> pagedindex) nor the flatfs incremental path (engine/flatfs_incremental.py -> parentraw),
which every backup imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dsbackup import datasets

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_a_backup_imports_no_numpy(tmp_path):
    store = tmp_path / "src"
    datasets.write_lmdb(str(store), datasets.iter_small(2000))
    code = ("import sys\nfrom dsbackup.cli.main import main\n"
            "rc = main(['backup', sys.argv[1], sys.argv[2]])\n"
            "print(rc, 'numpy' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": SRC}
    res = subprocess.run([sys.executable, "-c", code, f"lmdb:{store}",
                          str(tmp_path / "a.tar.gz")], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "False"], res.stdout
