"""Every value of the configuration file is checked at load (issue 20, item 11).

Each bad value is refused by the loader and by the CLI (``schedule list`` and ``schedule run``)
with exit code 2 and one line naming the file, the table and key and what is expected — never a
traceback, never accepted to fail later, and never showing a secret. The CLI runs in this
process for every value (its main(): the same code path, no interpreter start per case) and as
a real subprocess for a sample of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsbackup.errors import ConfigError
from dsbackup.scheduler.config_file import load_config

TEMPLATE = """
[scheduler]
backup_dir = {backup_dir}
state_dir = {state_dir}
health_check_interval = "off"
{scheduler}

[retention]
keep_last = 2
{retention}

[notifications]
{notifications}

[[schedule]]
id = {id}
cron = {cron}
source = {source}
{job}
[schedule.backup]
{backup}
"""


def config_text(**slots: str) -> str:
    slots.setdefault("id", '"ipfs"')
    slots.setdefault("cron", '"@daily"')
    slots.setdefault("source", '"memory:"')
    slots.setdefault("backup_dir", '"b"')
    slots.setdefault("state_dir", '"st"')
    for k in ("scheduler", "retention", "notifications", "job", "backup"):
        slots.setdefault(k, "")
    return TEMPLATE.format(**slots)


SMTP = '[notifications.email]\nhost = "127.0.0.1"\nto = ["ops@example.org"]\n'
HOOK = '[notifications.webhook]\nurl = "https://hooks.example.org/h"\n'

# (case id, template slots, fragments the one-line message must hold, text it must not hold)
BAD = [
    ("cron-int", {"cron": "5"}, ["cron", "expected a non-empty string", "integer 5"], None),
    ("cron-never-fires", {"cron": '"0 0 30 2 *"'}, ["cron", "never fires"], None),
    ("cron-garbage", {"cron": '"every day"'}, ["cron", "invalid cron"], None),
    ("time-zone-int", {"scheduler": "time_zone = 5"}, ["[scheduler] time_zone", "integer"],
     None),
    ("time-zone-unknown", {"scheduler": 'time_zone = "Mars/Base"'},
     ["time_zone", "unknown time zone"], None),
    ("id-int", {"id": "5"}, ["[[schedule]] #1 id", "expected a non-empty string"], None),
    ("id-bad-chars", {"id": '"my job!"'}, ["invalid schedule id"], None),
    ("concurrent-str", {"scheduler": 'concurrent_backups = "2"'},
     ["concurrent_backups", "expected an integer", 'string "2"'], None),
    ("concurrent-zero", {"scheduler": "concurrent_backups = 0"},
     ["concurrent_backups", ">= 1", "got an integer 0"], None),
    ("poll-str", {"scheduler": 'poll_interval = "30"'}, ["poll_interval", "expected a number"],
     None),
    ("poll-negative", {"scheduler": "poll_interval = -1"}, ["poll_interval", "> 0"], None),
    # a grace of 0 skipped every slot the loop noticed a moment late (all of them, nearly)
    ("misfire-zero", {"scheduler": "misfire_grace_time = 0"},
     ["misfire_grace_time", "positive duration"], None),
    ("misfire-zero-s", {"scheduler": 'misfire_grace_time = "0s"'},
     ["misfire_grace_time", "positive duration"], None),
    ("deep-sample-str", {"scheduler": 'health_deep_sample = "0.1"'},
     ["health_deep_sample", "expected a number in 0..1"], None),
    ("deep-sample-range", {"scheduler": "health_deep_sample = 1.5"},
     ["health_deep_sample", "0..1"], None),
    ("backup-dir-int", {"backup_dir": "5"}, ["backup_dir", "integer"], None),
    ("state-dir-bool", {"state_dir": "true"}, ["state_dir", "boolean"], None),
    ("metrics-port-str", {"scheduler": 'metrics_port = "abc"'},
     ["metrics_port", "expected an integer in 0..65535"], None),
    ("metrics-port-range", {"scheduler": "metrics_port = 70000"}, ["metrics_port", "0..65535"],
     None),
    ("verify-str", {"scheduler": 'verify_after_backup = "yes"'},
     ["verify_after_backup", "boolean"], None),
    ("free-ratio-range", {"scheduler": "min_free_ratio = 2"}, ["min_free_ratio", "0..1"], None),
    ("free-bytes-bad", {"scheduler": 'min_free_bytes = "lots"'}, ["min_free_bytes", "size"],
     None),
    ("health-interval-bool", {"scheduler": "health_check_interval_x = 1"},
     ["health_check_interval_x", "did you mean 'health_check_interval'"], None),
    ("scheduler-typo", {"scheduler": 'backup_dri = "x"'},
     ["[scheduler] backup_dri", "unknown key", "did you mean 'backup_dir'"], None),
    ("retention-str", {"retention": 'keep_daily = "7"'}, ["[retention] keep_daily", "integer"],
     None),
    ("retention-typo", {"retention": "keep_dayly = 7"}, ["did you mean 'keep_daily'"], None),
    ("enabled-str", {"job": 'enabled = "false"'},
     ['[[schedule]] #1 "ipfs" enabled', "expected a boolean", 'string "false"'], None),
    ("incremental-str", {"job": 'incremental = "yes"'}, ["incremental", "boolean"], None),
    ("full-every-str", {"job": 'full_every = "7"'}, ["full_every", "integer"], None),
    ("full-every-zero", {"job": "full_every = 0"}, ["full_every", ">= 1"], None),
    ("job-timeout-bad", {"job": 'timeout = "soon"'}, ["timeout", "duration"], None),
    ("job-typo", {"job": 'sorce = "memory:"'}, ["did you mean 'source'"], None),
    ("source-int", {"source": "5"}, ["source", "expected a non-empty string"], None),
    ("source-param-typo", {"source": '"lmdb:/srv/ipfs?sycn=0"'},
     ["source", "unknown parameter 'sycn' (did you mean 'sync'?)"], None),
    ("source-bool-typo", {"source": '"flatfs:/srv/ipfs?sync=ture"'},
     ["source", "parameter sync: expected 1/0", "'ture'"], None),
    ("source-scheme-typo", {"source": '"lmbd:/srv/ipfs"'},
     ["source", "unknown datastore scheme 'lmbd:'", "did you mean 'lmdb:'"], None),
    ("ca-file-missing", {"notifications": SMTP + 'ca_file = "no-such-ca.pem"\n'},
     ["[notifications.email] ca_file", "no-such-ca.pem: no such file"], None),
    ("compression-typo", {"backup": "compresion_level = 3"},
     ['[schedule.backup] of "ipfs" compresion_level', "did you mean 'compression_level'"],
     None),
    ("compression-range", {"backup": "compression_level = 42"},
     ["compression_level", "0..19", "42"], None),
    ("compression-gzip-range", {"backup": "compression_level = 12"},
     ["compression_level must be 0-9", "12"], None),
    ("codec-typo", {"backup": 'codec = "zst"'}, ["codec must be gzip or zstd", "'zst'"], None),
    ("encryption-key-file-missing", {"backup": 'encryption = {key_file = "no-such.key"}'},
     ['[schedule.backup.encryption] of "ipfs" key_file', "no-such.key"], None),
    ("encryption-unknown-key", {"backup": 'encryption = {keyfile = "k"}'},
     ['[schedule.backup.encryption] of "ipfs" keyfile: unknown key'], None),
    ("codec-int", {"backup": "codec = 1"}, ["codec must be gzip or zstd"], None),
    ("codec-zstd-level", {"backup": 'codec = "zstd"\ncompression_level = 0'},
     ["compression_level must be 1-19 for codec zstd", "0"], None),
    ("compression-bool", {"backup": "compression_level = true"},
     ["compression_level", "boolean"], None),
    ("workers-str", {"backup": 'workers = "4"'}, ["workers", "integer"], None),
    ("exclude-int", {"backup": "exclude_patterns = 5"}, ["exclude_patterns", "list"], None),
    ("include-metadata-str", {"backup": 'include_metadata = "true"'},
     ["include_metadata", "boolean"], None),
    # "no" was truthy: the schedule's backups skipped foreign files instead of failing
    ("skip-foreign-str", {"backup": 'skip_foreign = "no"'}, ["skip_foreign", "boolean"], None),
    ("resume-int", {"backup": "resume = 1"}, ["resume", "boolean"], None),
    ("notify-timeout-bool", {"notifications": "timeout = true"},
     ["[notifications] timeout", "duration"], None),
    ("email-password-int", {"notifications": SMTP + "username = 'u'\npassword = 12345678\n"},
     ["[notifications.email] password", "expected a non-empty string, got an integer"],
     "12345678"),
    ("email-to-int", {"notifications": '[notifications.email]\nhost = "h"\nto = 5\n'},
     ["[notifications.email] to", "e-mail addresses"], None),
    ("email-to-bad-address", {"notifications": '[notifications.email]\nhost = "h"\n'
                                               'to = ["ops@example.org", "ops at example"]\n'},
     ["to", "e-mail address", "ops at example"], None),
    ("email-to-two-in-one", {"notifications": '[notifications.email]\nhost = "h"\n'
                                              'to = "a@x.org, b@x.org"\n'},
     ["to", "e-mail address"], None),
    ("email-from-bad", {"notifications": SMTP + 'from = "nobody"\n'}, ["from", "e-mail"], None),
    ("email-port-str", {"notifications": SMTP + 'port = "587"\n'}, ["port", "integer"], None),
    ("email-tls-bad", {"notifications": SMTP + 'tls = "ssl"\n'}, ["tls", '"starttls"'], None),
    ("email-plaintext-auth", {"notifications": SMTP + 'tls = "none"\nusername = "u"\n'
                                                      'password = "pw-plain-9"\n'},
     ["[notifications.email] tls", "unencrypted", "allow_plaintext_auth"], "pw-plain-9"),
    ("email-on-failure-str", {"notifications": SMTP + 'on_failure = "false"\n'},
     ["on_failure", "boolean"], None),
    ("headers-str", {"notifications": HOOK + 'headers = "Bearer tok-SECRET-55"\n'},
     ["[notifications.webhook] headers", "a table of header names"], "tok-SECRET-55"),
    ("header-newline", {"notifications": HOOK + 'headers = { Authorization = '
                                                '"Bearer tok-NL-77\\n" }\n'},
     ["headers.Authorization", "line break"], "tok-NL-77"),
    ("header-int", {"notifications": HOOK + "headers = { X-Token = 424242 }\n"},
     ["headers.X-Token", "expected a string, got an integer"], "424242"),
    ("webhook-retries-str", {"notifications": HOOK + 'retries = "3"\n'},
     ["[notifications.webhook] retries", "integer"], None),
    ("webhook-url-space", {"notifications": '[notifications.webhook]\n'
                                            'url = "http://127.0.0.1:9/hooks/WEBHOOK TOKEN42"\n'},
     ["[notifications.webhook] url", "without spaces"], "TOKEN42"),
    ("webhook-url-int", {"notifications": "[notifications.webhook]\nurl = 5\n"},
     ["url", "integer"], None),
    ("ping-not-url", {"notifications": '[notifications.ping]\nsuccess = "hc-ping.com/x-uuid"\n'},
     ["[notifications.ping] success", "http:// or https:// URL"], "x-uuid"),
    ("ping-typo", {"notifications": '[notifications.ping]\nsucess = "https://h/x"\n'},
     ["did you mean 'success'"], None),
]

EMPTY = """
[scheduler]
backup_dir = "b"
state_dir = "st"
"""


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "sched.toml"
    f.write_text(text)
    return f


def check_message(msg: str, f: Path, fragments: list[str], secret: str | None) -> None:
    assert str(f) in msg and "\n" not in msg.strip()
    # named once: a [schedule.backup] error said 'F: [[schedule]] #1 "ipfs": F: [schedule...'
    assert msg.count(str(f)) == 1, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    if secret:
        assert secret not in msg


@pytest.mark.parametrize("slots,fragments,secret", [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_loader_refuses_each_bad_value(tmp_path, slots, fragments, secret):
    f = write(tmp_path, config_text(**slots))
    with pytest.raises(ConfigError) as info:
        load_config(f)
    check_message(str(info.value), f, fragments, secret)


def check_cli_refusal(run, tmp_path: Path, slots: dict, fragments: list[str],
                      secret: str | None) -> None:
    f = write(tmp_path, config_text(**slots))
    for action in (["list"], ["run"]):
        r = run("schedule", *action, "--config", f)
        assert r.returncode == 2, (action, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        check_message(lines[0], f, fragments, secret)
    assert not (tmp_path / "st").exists()  # refused before anything was started


@pytest.mark.parametrize("slots,fragments,secret", [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_cli_refuses_each_bad_value_at_load(tmp_path, run_cli_inprocess, monkeypatch, slots,
                                            fragments, secret):
    from dsbackup.cli import schedule

    def started(*a, **k):  # a value let through would start a daemon in this process
        raise AssertionError("the daemon was started")

    monkeypatch.setattr(schedule, "_run_daemon", started)
    check_cli_refusal(run_cli_inprocess, tmp_path, slots, fragments, secret)


# one of each kind: [scheduler], [[schedule]], [schedule.backup], a notifier with a secret
@pytest.mark.parametrize("case", ["concurrent-zero", "enabled-str", "compression-typo",
                                  "email-password-int"])
def test_cli_process_refuses_bad_values_at_load(tmp_path, run_cli, case):
    slots, fragments, secret = next(c[1:] for c in BAD if c[0] == case)
    check_cli_refusal(lambda *a: run_cli(*a, timeout=60), tmp_path, slots, fragments, secret)


@pytest.mark.parametrize("case", ["enabled-str", "headers-str", "cron-never-fires"])
def test_json_and_run_once_refuse_too(tmp_path, run_cli, case):
    slots, fragments, secret = next(c[1:] for c in BAD if c[0] == case)
    f = write(tmp_path, config_text(**slots))
    for action in (["list", "--json"], ["run-once", "ipfs"], ["run-once", "ipfs", "--json"]):
        r = run_cli("schedule", *action, "--config", f, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (action, r.stderr)
        assert secret is None or secret not in r.stdout + r.stderr
        if "--json" in action:
            doc = json.loads(r.stdout)
            assert doc["ok"] is False and doc["exit_code"] == 2
            check_message(doc["message"], f, fragments, secret)
        else:
            check_message(r.stderr.strip(), f, fragments, secret)


def test_the_template_itself_is_valid(tmp_path, run_cli):
    f = write(tmp_path, config_text())
    assert [s.id for s in load_config(f).schedules] == ["ipfs"]
    r = run_cli("schedule", "list", "--config", f, timeout=60)
    assert r.returncode == 0, r.stderr


def test_an_empty_configuration_is_an_error(tmp_path, run_cli):
    f = write(tmp_path, EMPTY)
    with pytest.raises(ConfigError, match=r"no \[\[schedule\]\] table: nothing to schedule"):
        load_config(f)
    for action in ("run", "list"):
        r = run_cli("schedule", action, "--config", f, timeout=60)
        assert r.returncode == 2 and "nothing to schedule" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_one_address_may_be_a_string(tmp_path):
    f = write(tmp_path, config_text(notifications='[notifications.email]\nhost = "h"\n'
                                                  'to = "ops@x"\n'))
    assert load_config(f).scheduler.notification_config.recipients == ["ops@x"]


def test_plaintext_login_only_when_allowed_explicitly(tmp_path):
    f = write(tmp_path, config_text(notifications=SMTP + 'tls = "none"\nusername = "u"\n'
                                    'password = "pw"\nallow_plaintext_auth = true\n'))
    n = load_config(f).scheduler.notification_config
    assert n.smtp_tls == "none" and n.smtp_allow_plaintext_auth


def test_enabled_false_disables(tmp_path):
    f = write(tmp_path, config_text(job="enabled = false"))
    assert load_config(f).schedules[0].enabled is False


def test_valid_values_of_every_kind_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_DSB_HOOK", "https://hooks.example.org/x?token=t")
    f = write(tmp_path, config_text(
        scheduler='time_zone = "Europe/Berlin"\nconcurrent_backups = 2\npoll_interval = 0.5\n'
                  'health_deep_sample = 0\nmetrics_port = 0\nmin_free_bytes = "1G"\n'
                  'min_free_ratio = 0.1\nmisfire_grace_time = "6h"',
        retention='keep_daily = -1\nmax_age = "1y"',
        notifications=SMTP + 'port = 465\nusername = "u"\npassword = "p"\n'
                             '[notifications.webhook]\nurl_env = "TEST_DSB_HOOK"\n'
                             'headers = { Authorization = "Bearer x" }\nretries = 0\n',
        job='incremental = true\nfull_every = 3\ntimeout = 3600\nname = "n1"',
        backup='compression_level = 9\nworkers = 2\nexclude_patterns = "/local/**"\n'
               'chunk_max_bytes = "1M"\ntimeout = "2h"'))
    cfg = load_config(f)
    (job,) = cfg.schedules
    assert job.incremental and job.full_every == 3 and job.timeout.total_seconds() == 3600
    assert job.backup_config == {"compression_level": 9, "workers": 2,
                                 "exclude_patterns": ["/local/**"],
                                 "chunk_max_bytes": 1 << 20, "timeout": 7200.0}
    n = cfg.scheduler.notification_config
    assert n.smtp_tls == "tls" and n.webhook_retries == 0
    assert n.webhook_url.reveal().endswith("token=t") and "token" not in repr(n.webhook_url)
    assert cfg.scheduler.health_deep_sample == 0 and cfg.scheduler.metrics_port == 0


@pytest.mark.parametrize("kw", [{"concurrent_backups": "2"}, {"poll_interval": "30"},
                                {"health_deep_sample": "0.1"}, {"metrics_port": "abc"},
                                {"verify_after_backup": "false"}, {"time_zone": 5},
                                {"concurrent_backups": True}, {"metrics_port": 70000}])
def test_the_python_api_refuses_wrong_types_too(tmp_path, kw):
    from dsbackup.scheduler import SchedulerConfig

    with pytest.raises(ConfigError, match=next(iter(kw)) if "time_zone" not in kw else "zone"):
        SchedulerConfig(state_path=tmp_path / "st", **kw)


def test_workers_above_the_bound_in_an_old_config_is_clamped_with_one_warning(tmp_path,
                                                                             run_cli):
    """A config file written before --workers had its bound (1 to 256) with `workers = 512`
    stopped the daemon at start (every schedule refused): a performance setting from an old
    file now runs at 256 with one warning line naming the file and the schedule; a run-once
    of it makes its backup. Not a positive integer is still refused."""
    from dsbackup import datasets

    datasets.write_lmdb(str(tmp_path / "src"), iter([(b"/a", b"1")]))
    f = write(tmp_path, config_text(backup="workers = 512",
                                    source=json.dumps(f"lmdb:{tmp_path / 'src'}")))
    (job,) = load_config(f).schedules
    assert job.backup_config == {"workers": 256}
    r = run_cli("schedule", "run-once", "ipfs", "--config", f)
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if "workers" in x]
    assert lines == [f'dsbackup: {f}: [schedule.backup] of "ipfs" workers = 512 is more than '
                     "dsbackup runs (1 to 256); using 256"], r.stderr
    assert len(list((tmp_path / "b").glob("ipfs_*.tar.gz"))) == 1
    with pytest.raises(ConfigError, match="workers"):
        load_config(write(tmp_path, config_text(backup="workers = 0")))


@pytest.mark.parametrize("value", ["30", "30.5", "true", "3600"])
def test_max_age_needs_its_unit(tmp_path, value):
    """A bare number elsewhere is seconds; as a retention horizon ``max_age = 30`` (meant as
    days) would make every archive but the newest a candidate for pruning: under a day it is
    refused."""
    f = write(tmp_path, config_text(retention=f"keep_daily = 7\nmax_age = {value}"))
    with pytest.raises(ConfigError, match=r"max_age.*unit"):
        load_config(f)
    for ok in ('"30d"', "2592000"):  # a day or more in seconds stays (configs written so)
        f = write(tmp_path, config_text(retention=f"keep_daily = 7\nmax_age = {ok}"))
        assert load_config(f).scheduler.retention_policy.max_age.days == 30
