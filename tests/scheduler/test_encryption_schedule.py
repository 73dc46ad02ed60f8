"""Scheduler `encryption` (docs/SCHEDULER.md, docs/ENCRYPTION.md): encrypted archives made,
verified and pruned by the scheduler; no secret in its state or config errors."""

from __future__ import annotations

import os

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
    r = run_cli("-v", "schedule", "run-once", "enc", "--config", cfg)
    assert r.returncode == 0, r.stderr
    assert PASS not in r.stdout + r.stderr  # nor in its log lines
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


def test_key_file_schedule_keeps_the_key_out_of_state_and_output(tmp_path, run_cli):
    cfg = _config(tmp_path, 'encryption = {key_file = "k"}')
    assert run_cli("keygen", tmp_path / "k").returncode == 0
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    secret = (tmp_path / "k").read_text().strip()
    r = run_cli("-v", "schedule", "run-once", "enc", "--config", cfg, "--json")
    assert r.returncode == 0, r.stderr
    assert secret not in r.stdout + r.stderr
    assert secret.upper() not in r.stdout + r.stderr
    raw = bytes.fromhex(secret)
    for p in tmp_path.rglob("*"):
        if p.is_file() and p.name != "k":
            data = p.read_bytes()
            assert raw not in data and secret.encode() not in data, p


@pytest.mark.parametrize("turned", ["on", "off"])
def test_a_parent_of_the_other_kind_gives_a_full_backup(make_scheduler, clock, tmp_path,
                                                        monkeypatch, turned):
    """Encryption turned on in an incremental schedule: its next run was an encrypted
    incremental on the newest plain archive, so its records stayed readable without a key
    in that parent (and an attacker who planted a plain archive there chose what the new one
    refers to), contrary to 'every archive of a chain under the same key material'. Turned
    off: the plain incremental of an encrypted parent failed every run until a full one was
    due. Either way the run is now a full backup, saying why."""
    from dsbackup.scheduler.runner import ManagerRunner

    from .test_parent_reads import run_day, schedule

    monkeypatch.setattr(crypto, "_keyring", [])
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), iter([(b"/blocks/K%05d" % i, b"v" * 80) for i in range(300)]))
    (tmp_path / "pass").write_text(PASS + "\n")
    spec = {"passphrase_file": str(tmp_path / "pass")}
    runner = ManagerRunner()
    s = make_scheduler(runner=runner, verify_after_backup=False)
    s.add_schedule(schedule(src, **({"encryption": spec} if turned == "off" else {})))
    first = run_day(s, clock, src, 6)
    cfg = s.get_schedule("db").backup_config
    if turned == "on":
        cfg["encryption"] = spec
        runner._key(spec)
    else:
        del cfg["encryption"]
    second = run_day(s, clock, src, 7)
    assert second.parent is None, second
    assert f"the newest archive {os.path.basename(first.archive)} is " in second.fallback
    key = crypto.load_passphrase_file(tmp_path / "pass")
    with ArchiveReader(second.archive, key=key) as r:
        assert r.encrypted == (turned == "on") and not r.is_incremental
