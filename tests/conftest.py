"""Shared test helpers (small and additive: other branches add their own fixtures here)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]

# The signal tests send SIGINT/SIGHUP to CLI children and expect a terminal's defaults there.
# A suite started in the background by a script (`make test &`: SIGINT ignored) or under
# `nohup` (SIGHUP ignored) would hand its children the ignored signals (a backup under nohup
# rightly runs on), so the children get the defaults back, whatever started the suite.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGHUP, signal.SIG_DFL)


FIXTURES_DIR = _ROOT / "tests" / "fixtures"


def fixtures_dir() -> Path:
    """Real data written by other tools (Kubo repo, Go path.Clean vectors): tests/fixtures,
    or the folder $DSBACKUP_FIXTURES names."""
    env = os.environ.get("DSBACKUP_FIXTURES")
    return Path(env) if env else FIXTURES_DIR


@pytest.fixture(scope="session")
def go_fixtures() -> Path:
    d = fixtures_dir()
    missing = [n for n in ("go-path-clean.tsv", "kubo-v16-repo/version") if not (d / n).is_file()]
    if missing:
        pytest.fail(f"test fixtures missing from {d}: {', '.join(missing)} (see "
                    "tests/fixtures/README.md)", pytrace=False)
    return d


# -- archives and the CLI (backup layer) ------------------------------------------------------

SRC_DIR = _ROOT / "src"


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running `python -m dsbackup` in a subprocess on this tree's code."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("COLUMNS", None)
    return env


@pytest.fixture
def run_cli(cli_env):
    """Run the CLI as a subprocess; returns CompletedProcess (text)."""
    import subprocess
    import sys

    def run(*args: str, timeout: float = 300, **kw):
        return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)],
                              env=cli_env, capture_output=True, text=True, timeout=timeout,
                              **kw)

    return run


@pytest.fixture
def run_cli_inprocess(monkeypatch):
    """Run the CLI's main() in this process, for tests of messages and exit codes over many
    inputs (a subprocess start costs ~0.5 s); tests about the process itself (signals,
    tracebacks at exit, imports) use run_cli. Returns a CompletedProcess (text)."""
    import contextlib
    import io
    import logging
    import subprocess

    from dsbackup.cli.main import main

    monkeypatch.setenv("DSBACKUP_NO_MALLOPT", "1")  # leave this process's allocator alone
    log = logging.getLogger("dsbackup")
    handlers, level = log.handlers[:], log.level

    def run(*args: str) -> subprocess.CompletedProcess:
        argv = [str(a) for a in args]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse's usage errors
                rc = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        return subprocess.CompletedProcess(["dsbackup", *argv], rc, out.getvalue(),
                                           err.getvalue())

    yield run
    log.handlers[:] = handlers
    log.setLevel(level)


def write_archive(path, records, *, chunk_size=4, chunk_max_bytes=1 << 20, level=1,
                  catalog=False, page_entries=None, key=None):
    """Write a dsbackup archive of sorted (key, value) records with the native chunker
    (`page_entries`: a paged index, docs/FORMAT.md §11.3; `key`: encrypted)."""
    from dsbackup._ext.framing import Chunker
    from dsbackup.archive.writer import ArchiveWriter
    from dsbackup.pipeline.chunks import compress_chunk

    chunker = Chunker(chunk_size, chunk_max_bytes, catalog=catalog)
    manifest = {"format": "dsbackup", "version": 1, "created": "2026-01-01T00:00:00+00:00",
                "settings": {"chunk_size": chunk_size}, "parent": None}
    keys = [k for k, _ in records]
    values = [v for _, v in records]
    with ArchiveWriter(path, manifest=manifest, level=level, created=1767225600,
                       page_entries=page_entries, key=key) as w:
        chunks = chunker.add(keys, values) if keys else []
        last = chunker.finish()
        if last is not None:
            chunks.append(last)
        for c in chunks:
            rc = compress_chunk(c, level, catalog)
            w.add_chunk(rc, rc.catalog_body, rc.catalog_xxh3)
        return w.finish({"note": "test"})


@pytest.fixture
def make_archive():
    """write_archive(path, records, **settings) -> WrittenArchive."""
    return write_archive


@pytest.fixture
def kubo_node_repo(tmp_path, go_fixtures) -> Path:
    """The fixture repo, writable, with a keystore and the runtime files a node leaves."""
    import shutil

    dst = tmp_path / "repo"
    shutil.copytree(go_fixtures / "kubo-v16-repo", dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)
    (dst / "config").chmod(0o600)
    ks = dst / "keystore"
    if not ks.is_dir():
        ks.mkdir(mode=0o700)
        (ks / "key_mykey").write_bytes(b"\x08\x01\x12\x40" + bytes(range(64)))
        (ks / "key_mykey").chmod(0o400)
    for name in ("repo.lock", "api", "gateway", "config.tmp"):
        (dst / name).write_text("runtime\n")
    return dst


# -- S3: a real S3-protocol server on 127.0.0.1 (tests/support/s3server.py) -------------------


class S3Env:
    """A fresh bucket on a moto server; `env` for CLI subprocesses, `url(key)` for locations."""

    def __init__(self, server, endpoint: str, bucket: str, monkeypatch) -> None:
        from s3server import ACCESS_KEY, SECRET_KEY

        self.server = server
        self.endpoint = endpoint
        self.bucket = bucket
        self.client = server.client()
        self.client.create_bucket(Bucket=bucket)
        self.env = dict(os.environ, PYTHONPATH=str(SRC_DIR), AWS_ACCESS_KEY_ID=ACCESS_KEY,
                        AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_REGION="us-east-1",
                        AWS_ENDPOINT_URL=endpoint, DSBACKUP_S3_RETRIES="2",
                        DSBACKUP_S3_TIMEOUT="10",
                        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
                        AWS_CONFIG_FILE="/nonexistent/aws-config")
        self.env.pop("AWS_PROFILE", None)
        self.env.pop("DSBACKUP_S3_STALE_HOURS", None)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                  "AWS_ENDPOINT_URL", "DSBACKUP_S3_RETRIES", "DSBACKUP_S3_TIMEOUT",
                  "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
            monkeypatch.setenv(k, self.env[k])
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        monkeypatch.delenv("DSBACKUP_S3_STALE_HOURS", raising=False)
        from dsbackup.storage import s3, s3config

        monkeypatch.setattr(s3config, "_settings", s3config.S3Settings())
        monkeypatch.setattr(s3config, "_tuned", False)
        monkeypatch.setattr(s3config, "_stale_given", False)
        s3config.configure()
        s3.reset()

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def objects(self, prefix: str = "") -> list[str]:
        got = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in got.get("Contents", []))

    def uploads(self) -> list[str]:
        got = self.client.list_multipart_uploads(Bucket=self.bucket)
        return [u["Key"] for u in got.get("Uploads", [])]

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()


@pytest.fixture(scope="session")
def moto_server():
    from s3server import MotoServer

    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def s3(moto_server, monkeypatch, request):
    """A fresh bucket on the shared moto server (obstore clients reset)."""
    import re

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"t-{name}-{os.getpid() % 10000}-{id(request) % 10000}"
    env = S3Env(moto_server, moto_server.endpoint, bucket, monkeypatch)
    yield env
    from dsbackup.storage import s3 as s3mod

    s3mod.reset()
