"""The DSBACKUP_S3_* environment: a value out of range or of the wrong kind is one error line,
exit 2, naming the variable, before any request (real subprocesses; no server is reached)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ENDPOINT = "http://127.0.0.1:1"  # nothing listens: a request would fail differently


def _run(cli_env, extra: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    env = {**cli_env, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", **extra}
    return subprocess.run([sys.executable, "-m", "dsbackup", *argv], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("name", "value"), [
    ("DSBACKUP_S3_RETRIES", "-1"), ("DSBACKUP_S3_RETRIES", "99999999999999999999"),
    ("DSBACKUP_S3_TIMEOUT", "-1"), ("DSBACKUP_S3_TIMEOUT", "nan"),
    ("DSBACKUP_S3_TIMEOUT", "99999999999999999999"), ("DSBACKUP_S3_PART_MB", "99999999999"),
    ("DSBACKUP_S3_CONCURRENCY", "0"), ("DSBACKUP_S3_READ_CONCURRENCY", "-1"),
    ("DSBACKUP_S3_RETRIES", "abc"), ("DSBACKUP_S3_GAP_KB", "-1"), ("DSBACKUP_S3_GAP_KB", "9000"),
])
def test_a_tuning_value_out_of_range_is_exit_2_naming_it(cli_env, name, value):
    r = _run(cli_env, {name: value}, "--s3-endpoint", ENDPOINT, "verify", "s3://bucket/a.dsb")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines() == [r.stderr.strip()] and f"{name}={value!r}" in r.stderr


def test_a_bad_stale_age_with_an_endpoint_option_is_one_line(cli_env, tmp_path):
    # --s3-endpoint configures the client before the command runs: this was a traceback, exit 1
    r = _run(cli_env, {"DSBACKUP_S3_STALE_HOURS": "soon"}, "--s3-endpoint", ENDPOINT,
             "backup", "memory:", "s3://bucket/p/a.dsb")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().startswith("dsbackup: error: DSBACKUP_S3_STALE_HOURS: ")
    # the option wins over the environment, as documented: no complaint about it then
    r = _run(cli_env, {"DSBACKUP_S3_STALE_HOURS": "soon"}, "--s3-endpoint", ENDPOINT,
             "--s3-stale-hours", "5", "verify", os.fspath(tmp_path / "none.dsb"))
    assert r.returncode == 2 and "no such archive" in r.stderr and "STALE" not in r.stderr


def test_a_binary_aws_config_file_is_named(cli_env, tmp_path):
    conf = tmp_path / "config"
    conf.write_bytes(b"\xee\xff\x00 not an INI file")
    r = _run(cli_env, {"AWS_CONFIG_FILE": str(conf)}, "--s3-endpoint", ENDPOINT, "verify",
             "s3://bucket/a.dsb")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{conf}: cannot parse: not a text file" in r.stderr


@pytest.mark.parametrize("missing", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_one_key_variable_without_the_other_is_refused(cli_env, missing):
    """A secret lost from a deployment's environment: refused as botocore refuses partial
    credentials (exit 2, one line naming both), not taken as "no keys" and answered with the
    instance's role or a profile (the metadata endpoint here would only time out)."""
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:1", missing: ""}
    r = _run(cli_env, env, "--s3-endpoint", ENDPOINT, "verify", "s3://bucket/a.dsb")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip()
    assert r.stderr.splitlines() == [line] and "partial credentials" in line, r.stderr
    assert missing in line
