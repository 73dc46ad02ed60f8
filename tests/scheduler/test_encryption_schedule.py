"""Scheduler `encryption` (docs/SCHEDULER.md, docs/ENCRYPTION.md): encrypted archives made,
verified and pruned by the scheduler; no secret in its state or config errors."""

from __future__ import annotations

import pytest

from dsbackup import datasets
from dsbackup.archive import crypto
from dsbackup.archive.reader import ArchiveReader
from dsbackup.errors import ConfigError
from dsbackup.scheduler.config_file import load_config

PASS = "sched-passphrase-9c2d"


@pytest.fixture(autouse=True)
def small_scrypt(monkeypatch):
    monkeypatch.setenv(crypto.TEST_LOG2_N_ENV, "14")


def _config(tmp_path, enc: str) -> object:
    datasets.write_lmdb(str(tmp_path / "src"), iter([(b"/k/%d" % i, b"v" * 50)
                                                     for i in range(200)]))
    (tmp_path / "pass").write_text(PASS + "\n")
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'''[scheduler]
backup_dir = "out"
state_dir = "state"

[[schedule]]
id = "enc"
cron = "0 * * * *"
source = "lmdb:{tmp_path / 'src'}"
[schedule.backup]
{enc}
''')
    return cfg


def test_scheduled_encrypted_backup(tmp_path, run_cli):
    cfg = _config(tmp_path, 'encryption = {passphrase_file = "pass"}')
    r = run_cli("schedule", "run-once", "enc", "--config", cfg)
    assert r.returncode == 0, r.stderr
    out = list((tmp_path / "out").glob("enc_*.tar.gz"))
    assert len(out) == 1
    with pytest.raises(Exception, match="archive is encrypted"):
        ArchiveReader(out[0])
    with ArchiveReader(out[0], key=crypto.load_passphrase_file(tmp_path / "pass")) as rd:
        assert rd.encrypted and rd.summary["records"] == 200
    for p in (tmp_path / "state").rglob("*"):
        if p.is_file():
            assert PASS.encode() not in p.read_bytes()
    r = run_cli("schedule", "list", "--config", cfg, "--json")
    assert r.returncode == 0 and PASS not in r.stdout


def test_encryption_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="passphrase_file"):
        load_config(_config(tmp_path, 'encryption = {passphrase_file = "missing"}'))
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(_config(tmp_path, 'encryption = {}'))
