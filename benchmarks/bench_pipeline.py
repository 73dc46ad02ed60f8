"""pytest-benchmark cases for end-to-end backup, restore and verify on the benchmark data sets
(benchdata.py: "blocks" in LMDB and flatfs, "small" in LMDB).

Run: python -m pytest benchmarks/bench_pipeline.py --benchmark-only
(``DSBACKUP_BENCH_SCALE=0.01`` for a smoke run; the native stages are in bench_native.py;
benchmarks/compare.py measures the same operations against the baselines.)
"""

from __future__ import annotations

import shutil

import benchdata
import pytest

from dsbackup.engine.backup import BackupManager
from dsbackup.engine.config import BackupConfig

DATASETS = {
    "blocks-lmdb": benchdata.blocks_lmdb,
    "blocks-flatfs": benchdata.blocks_flatfs,
    "small-lmdb": benchdata.small_lmdb,
}


@pytest.fixture(scope="module", params=sorted(DATASETS))
def dataset(request):
    return DATASETS[request.param]()


@pytest.fixture(scope="module")
def archive(dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("archive") / "ref.tar.gz"
    BackupManager(BackupConfig()).create_backup(dataset.uri, path)
    return path


@pytest.mark.parametrize("level", [1, 6])
def test_backup(benchmark, dataset, tmp_path, level):
    mgr = BackupManager(BackupConfig(compression_level=level))
    out = tmp_path / "b.tar.gz"

    def run():
        out.unlink(missing_ok=True)
        return mgr.create_backup(dataset.uri, out)

    meta = benchmark.pedantic(run, rounds=3, iterations=1)
    assert meta.total_keys == dataset.records
    benchmark.extra_info.update(raw_bytes=dataset.raw_bytes, archive_bytes=meta.compressed_size)


def test_restore(benchmark, dataset, archive, tmp_path):
    mgr = BackupManager(BackupConfig())
    n = [0]

    def run():
        n[0] += 1
        target = tmp_path / f"r{n[0]}"
        res = mgr.restore_backup(archive, f"lmdb:{target}")
        shutil.rmtree(target)
        return res

    res = benchmark.pedantic(run, rounds=3, iterations=1)
    assert res.records_written == dataset.records


@pytest.mark.parametrize("deep", [False, True], ids=["quick", "deep"])
def test_verify(benchmark, dataset, archive, deep):
    mgr = BackupManager(BackupConfig())
    report = benchmark(mgr.verify_backup, archive, deep)
    assert report.ok and report.chunks > 0
    if deep:
        assert report.records == dataset.records
