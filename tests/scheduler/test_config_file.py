"""The TOML configuration file and the value parsers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from dsbackup.errors import ConfigError
from dsbackup.scheduler.config_file import load_config
from dsbackup.scheduler.durations import format_duration, parse_duration, parse_size

FULL = """
[scheduler]
backup_dir = "b"
state_dir = "/var/lib/dsbackup"
time_zone = "America/New_York"
concurrent_backups = 2
health_check_interval = "30m"
misfire_grace_time = "6h"
min_free_bytes = "2G"
metrics_port = 9808

[retention]
keep_daily = 7
keep_weekly = 4
max_age = "1y"

[notifications]
timeout = "5s"
[notifications.email]
host = "smtp.example.org"
port = 465
username = "u"
password_env = "TEST_DSB_SMTP_PW"
to = ["a@example.org", "b@example.org"]
[notifications.webhook]
url = "https://hooks.example.org/x?token=t"
retries = 1
[notifications.ping]
success = "https://hc-ping.com/uuid"

[[schedule]]
id = "blocks"
cron = "30 2 * * *"
source = "flatfs:/srv/blocks"
timeout = "2h"
[schedule.backup]
compression_level = 3
[schedule.retention]
keep_last = 5

[[schedule]]
id = "meta"
name = "kubo-meta"
cron = "@hourly"
source = "leveldb:/srv/meta"
enabled = false
"""


def test_full_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_DSB_SMTP_PW", "pw-from-env")
    f = tmp_path / "s.toml"
    f.write_text(FULL)
    cfg = load_config(f)
    sc = cfg.scheduler
    assert sc.default_backup_dir == tmp_path / "b"
    assert sc.state_path == Path("/var/lib/dsbackup")
    assert sc.time_zone == "America/New_York" and sc.concurrent_backups == 2
    assert sc.health_check_interval == timedelta(minutes=30)
    assert sc.misfire_grace_time == timedelta(hours=6)
    assert sc.min_free_bytes == 2 << 30 and sc.metrics_port == 9808
    assert sc.retention_policy.keep_daily == 7 and sc.retention_policy.max_age.days == 365
    n = sc.notification_config
    assert n.smtp_tls == "tls" and n.smtp_port == 465  # port 465: implicit TLS
    assert n.smtp_password.reveal() == "pw-from-env" and n.recipients == ["a@example.org", "b@example.org"]
    assert n.timeout == 5 and n.webhook_retries == 1
    assert n.ping_success_url.reveal() == "https://hc-ping.com/uuid"
    assert "pw-from-env" in n.secrets() and "pw-from-env" not in repr(n)
    blocks, meta = cfg.schedules
    assert blocks.name == "blocks" and blocks.backup_config == {"compression_level": 3}
    assert blocks.retention_policy.keep_last == 5 and blocks.timeout == timedelta(hours=2)
    assert meta.name == "kubo-meta" and not meta.enabled and meta.backup_config is None


@pytest.mark.parametrize("text,msg", [
    ("[scheduler]\nbackup_dri = 'x'\n", "unknown key"),
    ("[[schedule]]\nid='a'\ncron='@daily'\n", "source: missing"),
    ("[[schedule]]\nid='a'\ncron='@daily'\nsource='memory:'\n[[schedule]]\nid='a'\n"
     "cron='@daily'\nsource='memory:'\n", "duplicate id"),
    ("[[schedule]]\nid='a'\ncron='every day'\nsource='memory:'\n", "invalid cron"),
    ("[scheduler]\ntime_zone='Nowhere/City'\n", "unknown time zone"),
    ("[retention]\nkeep_daily=-3\n", "keep_daily"),
    ("[notifications.email]\nhost='h'\nto=['x@y']\npassword_env='TEST_DSB_UNSET_VAR'\n",
     "TEST_DSB_UNSET_VAR"),
    ("[notifications.email]\nhost='h'\n", "no recipients"),
    ("not toml [", "invalid TOML"),
])
def test_bad_configurations_are_refused(tmp_path, text, msg):
    f = tmp_path / "s.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        load_config(f)


def test_durations_and_sizes():
    assert parse_duration("1w2d") == timedelta(days=9)
    assert parse_duration("90d") == timedelta(days=90)
    assert parse_duration("1y") == timedelta(days=365)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    assert parse_duration(30) == timedelta(seconds=30)
    assert format_duration(timedelta(days=9, minutes=5)) == "1w2d5m"
    for bad in ("", "5", "3x", "d", "-1d"):
        with pytest.raises(ConfigError):
            parse_duration(bad)
    assert parse_size("10G") == 10 << 30 and parse_size("512k") == 512 << 10
    assert parse_size(123) == 123
    with pytest.raises(ConfigError):
        parse_size("lots")


def test_a_schedule_retention_that_drops_rules_of_the_default_says_so(tmp_path, caplog):
    """`[schedule.retention] keep_daily = 14`, as docs/SCHEDULER.md's example had it under
    '# overrides [retention]', replaces the table whole: the schedule kept 14 daily archives
    and no weekly, monthly or yearly one (the default's keep_monthly = 12 ... gone at the
    next run's retention), without a word."""
    head = ('[scheduler]\nbackup_dir = "b"\nstate_dir = "s"\n[retention]\nkeep_last = 3\n'
            'keep_daily = 7\nkeep_monthly = 12\nkeep_yearly = -1\nmax_age = "3y"\n'
            '[[schedule]]\nid = "ipfs"\ncron = "@daily"\nsource = "memory:"\n'
            '[schedule.retention]\nkeep_daily = 14\n')
    f = tmp_path / "s.toml"
    f.write_text(head)
    policy = load_config(f).schedules[0].retention_policy
    assert (policy.keep_daily, policy.keep_monthly, policy.keep_yearly) == (14, 0, 0)
    warned = [r.getMessage() for r in caplog.records if "replaces [retention]" in r.getMessage()]
    assert len(warned) == 1, warned
    assert all(k in warned[0] for k in ("keep_last = 3", "keep_monthly = 12",
                                        "keep_yearly = -1", '"ipfs"', str(f)))
    assert "keep_daily" not in warned[0] and "max_age" not in warned[0]
    caplog.clear()
    f.write_text(head + "keep_last = 0\nkeep_monthly = 0\nkeep_yearly = 0\n")  # meant so
    load_config(f)
    assert not [r for r in caplog.records if "replaces [retention]" in r.getMessage()]
