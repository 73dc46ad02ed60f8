"""The scheduler CLI as a subprocess, with the real BackupManager and a real LMDB source:
run-once, list, the daemon (SIGKILL + restart, lock, SIGTERM, metrics) and prune."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from dsbackup import datasets
from dsbackup.engine import backup
from dsbackup.scheduler.archives import parse_archive_name


@pytest.fixture
def lmdb_source(tmp_path: Path) -> Path:
    src = tmp_path / "ipfs-lmdb"
    records = [(b"/blocks/CIQ%05d" % i, os.urandom(64) * (i % 7 + 1)) for i in range(300)]
    datasets.write_lmdb(str(src), iter(records))
    return src


def write_config(tmp_path: Path, source: Path, cron: str = "@daily", extra: str = "",
                 tail: str = "") -> Path:
    cfg = tmp_path / "scheduler.toml"
    cfg.write_text(f"""
[scheduler]
backup_dir = "backups"
state_dir = "state"
time_zone = "Europe/Berlin"
health_check_interval = "off"
poll_interval = 0.5
{extra}

[retention]
keep_last = 2

[[schedule]]
id = "ipfs"
name = "ipfs-node"
cron = "{cron}"
source = "lmdb:{source}"
[schedule.backup]
chunk_size = 50
{tail}
""")
    return cfg


def state_of(tmp_path: Path) -> dict:
    try:
        return json.loads((tmp_path / "state" / "state.json").read_text())["schedules"]["ipfs"]
    except (OSError, ValueError, KeyError):
        return {}


SECRET_HOOK = """
[notifications]
timeout = "1s"
[notifications.webhook]
url = "http://127.0.0.1:{port}/hook?token=SECRET-TOKEN-123"
"""


def test_run_once_and_list_with_a_real_lmdb_source(tmp_path, lmdb_source, run_cli):
    import socket

    with socket.socket() as s:  # a port with nothing listening: the webhook fails
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = write_config(tmp_path, lmdb_source, tail=SECRET_HOOK.format(port=port))
    res = run_cli("schedule", "run-once", "ipfs", "--config", cfg, "--json")
    assert res.returncode == 0, res.stderr
    assert "notification via webhook failed" in res.stderr
    assert "SECRET-TOKEN-123" not in res.stderr + res.stdout
    out = json.loads(res.stdout)
    assert out["ok"] and out["keys"] == 300 and out["verified"] is True
    archive = Path(out["archive"])
    assert archive.parent == tmp_path / "backups" and archive.exists()
    assert parse_archive_name(archive.name)[0] == "ipfs-node"
    meta = backup.BackupManager().inspect(archive)
    assert meta.total_keys == 300 and meta.fingerprint == out["fingerprint"]
    lst = run_cli("schedule", "list", "--config", cfg, "--json")
    assert lst.returncode == 0, lst.stderr
    row = json.loads(lst.stdout)["schedules"][0]
    assert row["statistics"]["runs"] == 1 and row["last_result"]["ok"]
    assert row["last_result"]["notified"] == {"webhook": False}
    assert row["next_run"].endswith(("+01:00", "+02:00"))  # shown in Europe/Berlin
    assert json.loads(lst.stdout)["daemon"] == {"running": False, "pid": None}
    human = run_cli("schedule", "list", "--config", cfg)
    assert "ipfs  [@daily]" in human.stdout and "runs 1, success 100%" in human.stdout
    assert "SECRET-TOKEN-123" not in lst.stdout + human.stdout


def test_run_once_failure_exit_code(tmp_path, run_cli):
    cfg = write_config(tmp_path, tmp_path / "does-not-exist")
    res = run_cli("schedule", "run-once", "ipfs", "--config", cfg, "--json")
    assert res.returncode == 2
    out = json.loads(res.stdout)
    assert not out["ok"] and out["exit_code"] == 2 and out["error"]
    assert run_cli("schedule", "run-once", "nope", "--config", cfg).returncode == 2


class Daemon:
    """`dsbackup schedule run` in a subprocess; its stderr is collected by a thread."""

    def __init__(self, cfg: Path, env: dict[str, str], *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dsbackup", "schedule", "run", "--config", str(cfg), *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for_text(self, needle: str, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return needle in self.text
            time.sleep(0.05)
        return True

    def finish(self, timeout: float = 20) -> int:
        rc = self.proc.wait(timeout)
        self._t.join(5)
        return rc


def wait_until(cond, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_daemon_killed_and_restarted_continues_and_a_second_daemon_is_refused(
        tmp_path, lmdb_source, cli_env, run_cli):
    # croniter's seconds field: a run every 2 seconds keeps the test short
    cfg = write_config(tmp_path, lmdb_source, cron="* * * * * */2")
    a = Daemon(cfg, cli_env)
    try:
        assert a.wait_for_text("scheduler running"), a.text
        assert wait_until(lambda: (state_of(tmp_path).get("statistics") or {}).get(
            "successes", 0) >= 2), a.text
        b = subprocess.run([sys.executable, "-m", "dsbackup", "schedule", "run", "--config",
                            str(cfg)], env=cli_env, capture_output=True, text=True, timeout=30)
        assert b.returncode == 4, b.stderr
        assert f"locked by pid {a.proc.pid}" in b.stderr
        once = run_cli("schedule", "run-once", "ipfs", "--config", cfg)
        assert once.returncode == 4  # also refused while the daemon serves the state dir
        listed = json.loads(run_cli("schedule", "list", "--config", cfg, "--json").stdout)
        assert listed["daemon"] == {"running": True, "pid": a.proc.pid}
    finally:
        a.proc.send_signal(signal.SIGKILL)
        a.finish()
    before = state_of(tmp_path)
    runs_before = before["statistics"]["runs"]
    assert (tmp_path / "state" / "daemon.lock").read_text().split() == [str(a.proc.pid)]

    c = Daemon(cfg, cli_env, "--metrics-port", "0")
    try:
        assert c.wait_for_text("scheduler running"), c.text
        assert f"stale lock of dead pid {a.proc.pid} taken over" in c.text
        assert wait_until(lambda: state_of(tmp_path)["statistics"]["successes"] >=
                          before["statistics"]["successes"] + 2), c.text
        port = int(c.text.split("http://127.0.0.1:")[1].split("/")[0])
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b'dsbackup_schedule_successes_total{schedule="ipfs"}' in metrics
        assert b"dsbackup_scheduler_up 1" in metrics
    finally:
        c.proc.send_signal(signal.SIGTERM)
        rc = c.finish()
    assert rc == 0, c.text
    assert "scheduler stopped" in c.text
    after = state_of(tmp_path)
    # the counters continued from the persisted state instead of starting again
    assert after["statistics"]["runs"] > runs_before
    assert after["running"] is None
    archives = sorted(p.name for p in (tmp_path / "backups").iterdir())
    assert 1 <= len(archives) <= 3 and all(parse_archive_name(n) for n in archives)
    assert not [p for p in (tmp_path / "backups").iterdir() if not p.name.endswith(".tar.gz")]


def test_prune_cli_on_real_archives(tmp_path, lmdb_source, run_cli):
    d = tmp_path / "archives"
    d.mkdir()
    mgr = backup.BackupManager()
    names = []
    for i in range(3):
        name = f"node_2026010{i + 1}_030000.tar.gz"
        mgr.create_backup(f"lmdb:{lmdb_source}", d / name)
        names.append(name)
        time.sleep(1.05)  # manifests' creation times (what prune reads) one second apart
    (d / "node_20260104_030000.tar.gz").write_bytes(b"not an archive")
    dry = run_cli("prune", d, "--keep-last", "1", "--dry-run", "--json")
    assert dry.returncode == 1, dry.stderr  # one archive skipped as unreadable
    doc = json.loads(dry.stdout)
    assert doc["dry_run"] and doc["deleted"] == []
    assert [(x["id"], x["keep"], x["rule"]) for x in doc["groups"]["node"]] == [
        (names[2], True, "last"), (names[1], False, None), (names[0], False, None)]
    assert [s["path"] for s in doc["skipped"]] == [str(d / "node_20260104_030000.tar.gz")]
    assert len(list(d.iterdir())) == 4
    # a scheduler state that marks the oldest archive verified protects it
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(json.dumps({"version": 1, "schedules": {"x": {
        "archives": [{"path": str(d / names[0]), "created": "2026-01-01T03:00:00+00:00",
                      "verified": True}]}}}))
    real = run_cli("prune", d, "--keep-last", "1", "--state", state)
    assert real.returncode == 1
    assert "rule newest-verified" in real.stdout and "prune  (not kept by any rule)" in real.stdout
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [names[0], names[2], "node_20260104_030000.tar.gz"])
    assert run_cli("prune", d).returncode == 2  # no rule given


def test_health_check_with_the_real_engine_finds_a_damaged_archive(tmp_path, lmdb_source):
    from dsbackup.scheduler import BackupScheduler, ScheduledBackup, SchedulerConfig

    cfg = SchedulerConfig(default_backup_dir=tmp_path / "b", state_path=tmp_path / "s",
                          health_check_interval=None, min_free_ratio=None,
                          health_deep_sample=1.0)
    with BackupScheduler(cfg) as s:  # the default runner: BackupManager
        s.add_schedule(ScheduledBackup(id="ipfs", name="ipfs", schedule="@daily",
                                       source=f"lmdb:{lmdb_source}",
                                       backup_config={"chunk_size": 20}))
        rec = s.execute_backup("ipfs")
        assert rec.ok and rec.verified and rec.keys == 300
        assert [r.ok for r in s.run_health_checks()] == [True, True, True]
        path = Path(rec.archive)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        verify = s.run_health_checks()[0]
        assert verify.check == "verify" and not verify.ok
        assert str(path) in verify.message
        assert not s.archives("ipfs")[-1].verified


def test_daemon_with_every_schedule_disabled_says_so(tmp_path, lmdb_source, cli_env):
    cfg = write_config(tmp_path, lmdb_source, tail="")
    cfg.write_text(cfg.read_text().replace('cron = "@daily"', 'cron = "@daily"\nenabled = false'))
    d = Daemon(cfg, cli_env)
    try:
        assert d.wait_for_text("no backup will run"), d.text
    finally:
        d.proc.send_signal(signal.SIGTERM)
        rc = d.finish()
    assert rc == 0 and "every schedule is disabled" in d.text


def test_run_once_that_left_files_out_is_exit_1_not_ok(tmp_path, run_cli):
    # `backup` exits 1 when files of the store are not in the archive; a scheduled run of the
    # same backup said "ok", exit 0
    from dsbackup.datastores import open_datastore

    ds = open_datastore(f"flatfs:{tmp_path / 'ff'}")
    ds.put_many([b"/K%03d" % i for i in range(20)], [b"v%d" % i for i in range(20)])
    ds.close()
    (tmp_path / "ff" / "stray.txt").write_text("not a block")
    cfg = tmp_path / "scheduler.toml"
    cfg.write_text(f'[scheduler]\nbackup_dir = "backups"\nstate_dir = "state"\n'
                   f'health_check_interval = "off"\n\n[[schedule]]\nid = "ff"\n'
                   f'cron = "@daily"\nsource = "flatfs:{tmp_path / "ff"}"\n'
                   f'[schedule.backup]\nskip_foreign = true\n')
    res = run_cli("schedule", "run-once", "ff", "--config", cfg, "--json")
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["exit_code"] == 1 and out["keys"] == 20
    assert "not backed up: 1 foreign files" in res.stderr and "stray.txt" in res.stderr


def test_run_once_into_a_backup_dir_that_is_a_file_is_one_line(tmp_path, lmdb_source,
                                                               run_cli):
    # an OSError of the environment printed "backup of schedule ... crashed" and a traceback
    (tmp_path / "backups").write_text("a file where the directory belongs")
    cfg = write_config(tmp_path, lmdb_source)
    res = run_cli("schedule", "run-once", "ipfs", "--config", cfg)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"{tmp_path / 'backups'}: File exists" in res.stderr


def test_sighup_stops_the_daemon_as_sigterm_does_and_a_second_one_cancels_cleanly(
        tmp_path, cli_env):
    """A closed terminal (SIGHUP) raised KeyboardInterrupt in the daemon: it waited silently
    for the running backup, then exited 130; a second SIGHUP killed the backup where it
    stood (its temp file left, the state saying it still ran). Now SIGHUP is SIGTERM: a
    message, running backups finish or, at a second signal, are cancelled; exit 0."""
    src = tmp_path / "big-lmdb"
    datasets.write_lmdb(str(src), ((b"/blocks/K%06d" % i, os.urandom(2000))
                                   for i in range(20_000)))
    cfg = write_config(tmp_path, src, cron="* * * * * */2",
                       tail="compression_level = 9\nworkers = 1")
    d = Daemon(cfg, cli_env)
    backups = tmp_path / "backups"
    try:
        assert wait_until(lambda: backups.is_dir() and any(
            ".tmp-" in p.name for p in backups.iterdir())), d.text
        d.proc.send_signal(signal.SIGHUP)
        assert d.wait_for_text("SIGHUP: stopping", timeout=10), d.text
        d.proc.send_signal(signal.SIGHUP)
        rc = d.finish(timeout=60)
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.finish()
    assert rc == 0, d.text
    assert "scheduler stopped" in d.text and "Traceback" not in d.text
    assert not [p.name for p in backups.iterdir() if ".tmp-" in p.name]
    assert state_of(tmp_path)["running"] is None


def test_runs_from_another_directory_find_the_archives_of_earlier_runs(
        tmp_path, lmdb_source, run_cli):
    """`run-once --config ../conf/s.toml` from one directory, then from another (or the
    daemon, at /): the state recorded archive paths relative to the first directory, so the
    second run's retention 'pruned' an archive it could not find (left on disk, dropped from
    the catalog: never pruned again), the health check called it missing and an incremental
    found no parent. Paths of the file are now the file's directory's, absolute, and so is a
    relative source (`lmdb:store`)."""
    conf, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    conf.mkdir()
    elsewhere.mkdir()
    (conf / "store").symlink_to(lmdb_source)
    cfg = write_config(conf, Path("store"))  # source = "lmdb:store"
    first = run_cli("schedule", "run-once", "ipfs", "--config", "../conf/scheduler.toml",
                    "--json", cwd=elsewhere)
    assert first.returncode == 0, first.stderr
    time.sleep(1.1)  # the next archive name
    second = run_cli("schedule", "run-once", "ipfs", "--config", "conf/scheduler.toml",
                     "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    time.sleep(1.1)  # keep_last counts seconds, as borg's: two archives of one second are one
    third = run_cli("schedule", "run-once", "ipfs", "--config", cfg, "--json", cwd="/")
    assert third.returncode == 0, third.stderr
    made = [json.loads(r.stdout)["archive"] for r in (first, second, third)]
    assert all(Path(a).is_absolute() for a in made), made
    # keep_last = 2: the third run pruned the first archive, really
    runs = [r.stdout + r.stderr for r in (first, second, third)]
    assert json.loads(third.stdout)["pruned"] == [Path(made[0]).name], runs
    assert sorted(p.name for p in (conf / "backups").iterdir()) == [
        Path(a).name for a in made[1:]]
    kept = [a["path"] for a in state_of(conf)["archives"]]
    assert kept == made[1:]


def test_list_after_the_cron_expression_was_edited_shows_the_run_to_come(
        tmp_path, lmdb_source, run_cli):
    """`schedule list` showed the new expression with the next run of the old one (from the
    state), while a daemon started now serves the new one; a daemon running keeps the old
    one until restarted, which the list now says."""
    cfg = write_config(tmp_path, lmdb_source, cron="0 3 * * *")  # Europe/Berlin
    assert run_cli("schedule", "run-once", "ipfs", "--config", cfg).returncode == 0
    cfg.write_text(cfg.read_text().replace('cron = "0 3 * * *"', 'cron = "17 22 * * *"'))
    row = json.loads(run_cli("schedule", "list", "--config", cfg, "--json").stdout)[
        "schedules"][0]
    assert row["next_run"].split("T")[1].startswith("22:17:00"), row["next_run"]
    assert row["restart_needed"] is False


def test_a_source_emptied_by_a_missing_mount_prunes_nothing(tmp_path, run_cli):
    """A flatfs store whose disk is not mounted is an empty directory: with the shard given in
    the URI each run backed it up as an archive of 0 records, 'ok', and its retention
    pruned the archives that held the data (keep_last = 1: at the first such run)."""
    from dsbackup.datastores import open_datastore

    store = tmp_path / "ff"
    ds = open_datastore(f"flatfs:{store}")
    ds.put_many([b"/CIQK%03d" % i for i in range(50)], [b"v%d" % i for i in range(50)])
    ds.close()
    shard = (store / "SHARDING").read_text().strip().removeprefix("/repo/flatfs/shard/v1/")
    cfg = tmp_path / "scheduler.toml"
    cfg.write_text(f'[scheduler]\nbackup_dir = "backups"\nstate_dir = "state"\n'
                   f'health_check_interval = "off"\n[retention]\nkeep_last = 1\n\n'
                   f'[[schedule]]\nid = "ff"\ncron = "@daily"\n'
                   f'source = "flatfs:{store}?shard={shard}"\n')
    first = run_cli("schedule", "run-once", "ff", "--config", cfg, "--json")
    assert first.returncode == 0 and json.loads(first.stdout)["keys"] == 50, first.stderr
    store.rename(tmp_path / "ff-disk")
    store.mkdir()  # the mount point, empty
    for _ in range(2):
        time.sleep(1.05)
        res = run_cli("schedule", "run-once", "ff", "--config", cfg, "--json")
        out = json.loads(res.stdout)
        assert res.returncode == 1 and out["keys"] == 0 and out["pruned"] == [], res.stderr
        assert "the source is empty (0 records)" in res.stderr
    assert Path(json.loads(first.stdout)["archive"]).exists()
    store.rmdir()
    (tmp_path / "ff-disk").rename(store)  # mounted again: retention as before
    time.sleep(1.05)
    res = run_cli("schedule", "run-once", "ff", "--config", cfg, "--json")
    assert res.returncode == 0 and len(json.loads(res.stdout)["pruned"]) == 3, res.stdout
    assert len(list((tmp_path / "backups").iterdir())) == 1


def test_archive_paths_an_older_state_recorded_relative_to_its_cwd_are_migrated(
        tmp_path, lmdb_source, run_cli):
    """A state written before paths were the config file's directory's holds archive paths
    relative to that run's working directory (`../conf/backups/ipfs-node_...tar.gz`): a run
    from elsewhere took them for missing archives, 'pruned' them (left on disk, out of the
    catalog) and the health check called the newest missing. They now name the archives in
    the schedule's backup directory, and the state is rewritten with absolute paths."""
    conf = tmp_path / "conf"
    conf.mkdir()
    cfg = write_config(conf, lmdb_source)
    first = run_cli("schedule", "run-once", "ipfs", "--config", cfg, "--json", cwd=conf)
    assert first.returncode == 0, first.stderr
    made = [json.loads(first.stdout)["archive"]]
    state = json.loads((conf / "state" / "state.json").read_text())
    [entry] = state["schedules"]["ipfs"]["archives"]
    entry["path"] = "../conf/backups/" + Path(made[0]).name  # as run from tmp_path/elsewhere
    (conf / "state" / "state.json").write_text(json.dumps(state))
    for _ in range(2):
        time.sleep(1.1)  # the next archive name
        r = run_cli("schedule", "run-once", "ipfs", "--config", cfg, "--json", cwd="/")
        assert r.returncode == 0, r.stderr
        made.append(json.loads(r.stdout)["archive"])
    # keep_last = 2: the third run pruned the first archive, really (not a phantom of it)
    assert json.loads(r.stdout)["pruned"] == [Path(made[0]).name], r.stdout
    assert sorted(p.name for p in (conf / "backups").iterdir()) == [
        Path(a).name for a in made[1:]]
    assert [a["path"] for a in state_of(conf)["archives"]] == made[1:]
