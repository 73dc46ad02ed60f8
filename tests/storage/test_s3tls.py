"""S3 over https (docs/STORAGE.md "https and private CAs"): a private CA made for the run, an
https proxy (tests/support/s3server.py) in front of moto that records each request's headers
as received, the real CLI in a subprocess. Payloads are unsigned over https and signed over
plain http; AWS_CA_BUNDLE (or the profile's ca_bundle) makes a private CA trusted; a wrong or
broken bundle is one line and exit 2."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from lmdb_files import read_all
from s3server import ACCESS_KEY, SECRET_KEY, FaultProxy
from tlscerts import make_pki

from dsbackup import datasets
from dsbackup.errors import ConfigError
from dsbackup.storage import s3config, s3tls


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=240)


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("dsbackup: error:")]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def no_secret(r: subprocess.CompletedProcess) -> None:
    for text in (r.stdout, r.stderr):
        assert SECRET_KEY not in text and ACCESS_KEY not in text


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def https(s3, pki):
    """An https endpoint (signed by the run's CA) in front of the test's moto bucket."""
    proxy = FaultProxy(("127.0.0.1", s3.server.port), tls=pki.server_context()).start()
    env = dict(s3.env, AWS_ENDPOINT_URL=proxy.endpoint, AWS_CA_BUNDLE=str(pki.ca),
               DSBACKUP_S3_PART_MB="5")
    env.pop("DSBACKUP_S3_SIGN_PAYLOAD", None)
    yield proxy, env
    proxy.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Blocks enough for an archive of two 5 MiB parts, and small records (made once, read
    only)."""
    src = tmp_path_factory.mktemp("store") / "src"
    recs = list(datasets.iter_blocks(48)) + list(datasets.iter_small(2000))
    datasets.write_lmdb(str(src), iter(recs))
    return src


def _puts(proxy: FaultProxy) -> list[tuple[str, str, str]]:
    """(request, x-amz-content-sha256 sent, SHA-256 of the body received) of every PUT."""
    return [(line, h.get("x-amz-content-sha256", ""), body)
            for line, h, body in zip(proxy.seen, proxy.headers, proxy.body_sha256)
            if line.startswith("PUT ")]


def test_round_trip_over_https_with_a_private_ca_and_unsigned_parts(s3, https, store,
                                                                     tmp_path):
    proxy, env = https
    url = s3.url("node/full.dsb")
    r = cli(env, "-vv", "backup", f"lmdb:{store}", url, "--include-metadata")
    assert r.returncode == 0, r.stderr
    no_secret(r)
    assert s3.objects() == ["node/full.dsb"] and s3.uploads() == []
    puts = _puts(proxy)
    assert len([p for p in puts if "partNumber=" in p[0]]) >= 2, puts  # a multipart upload
    assert all(sent == "UNSIGNED-PAYLOAD" for _, sent, _ in puts), puts
    # our own SigV4 client (the stale-upload check) went over the same TLS, trusting the CA
    assert any(line.startswith("GET ") and "uploads" in line for line in proxy.seen)
    assert "could not check for stale" not in r.stderr, r.stderr
    for cmd in (("verify", url), ("verify", url, "--quick"), ("ls", url), ("inspect", url)):
        r = cli(env, "-vv", *cmd)
        assert r.returncode == 0, (cmd, r.stderr)
        no_secret(r)
    r = cli(env, "restore", url, f"lmdb:{tmp_path / 'back'}")
    assert r.returncode == 0, r.stderr
    assert read_all(tmp_path / "back") == read_all(store)
    # the object is the archive a local backup writes: same bytes checked by a local verify
    local = tmp_path / "dl.dsb"
    local.write_bytes(s3.get("node/full.dsb"))
    assert cli(env, "verify", local).returncode == 0


def test_payload_signed_over_http_and_when_asked_over_https(s3, https, store):
    proxy, env = https
    # plain http (loopback): each part carries its body's SHA-256, as the AWS SDKs do there
    plain = FaultProxy(("127.0.0.1", s3.server.port)).start()
    try:
        r = cli(dict(env, AWS_ENDPOINT_URL=plain.endpoint), "backup", f"lmdb:{store}",
                s3.url("http.dsb"))
        assert r.returncode == 0, r.stderr
        puts = _puts(plain)
    finally:
        plain.stop()
    assert len(puts) >= 2
    assert [p for p in puts if p[1] != p[2]] == []
    # https with DSBACKUP_S3_SIGN_PAYLOAD=1: signed there too
    r = cli(dict(env, DSBACKUP_S3_SIGN_PAYLOAD="1"), "backup", f"lmdb:{store}",
            s3.url("signed.dsb"))
    assert r.returncode == 0, r.stderr
    puts = _puts(proxy)
    assert len(puts) >= 2
    assert [p for p in puts if p[1] != p[2] or p[1] == hashlib.sha256(b"").hexdigest()] == []
    assert sorted(s3.objects()) == ["http.dsb", "signed.dsb"]


def test_ca_bundle_from_the_profile_in_the_config_file(s3, https, store, tmp_path, pki):
    proxy, env = https
    conf = tmp_path / "aws-config"
    conf.write_text(f"[profile bk]\nca_bundle = {pki.ca}\n")
    env = dict(env, AWS_CONFIG_FILE=str(conf), AWS_PROFILE="bk")
    env.pop("AWS_CA_BUNDLE")
    r = cli(env, "backup", f"lmdb:{store}", s3.url("p.dsb"))
    assert r.returncode == 0, r.stderr
    assert s3.objects() == ["p.dsb"]


def test_a_server_signed_by_another_ca_is_refused(s3, https, store, tmp_path):
    proxy, env = https
    other = make_pki(tmp_path / "other", "some other CA")
    for bundle in (str(other.ca), None):  # the wrong CA; no bundle: the system roots only
        e = dict(env, AWS_CA_BUNDLE=bundle) if bundle else {
            k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}
        r = cli(e, "-vv", "backup", f"lmdb:{store}", s3.url("x.dsb"))
        assert r.returncode == 2, r.stderr
        line = one_line(r)
        assert "certificate was rejected" in line and "AWS_CA_BUNDLE" in line, line
        no_secret(r)
    assert s3.objects() == [] and s3.uploads() == []
    s3.client.put_object(Bucket=s3.bucket, Key="there.dsb", Body=b"x" * 100)
    r = cli(dict(env, AWS_CA_BUNDLE=str(other.ca)), "verify", s3.url("there.dsb"))
    assert r.returncode == 2 and "certificate was rejected" in one_line(r)


def test_an_unusable_ca_bundle_is_one_line_exit_2(s3, https, store, tmp_path, pki):
    proxy, env = https
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    for path, words in ((tmp_path / "missing.pem", "cannot read it: No such file"),
                        (tmp_path, "cannot read it: Is a directory"),
                        (garbage, "no PEM certificate in it"),
                        (broken, "not a valid PEM certificate bundle"),
                        (pki.key, "no PEM certificate in it")):
        for cmd in (("backup", f"lmdb:{store}", s3.url("y.dsb")), ("prune", s3.url(""),
                                                                     "--keep-last", "1")):
            r = cli(dict(env, AWS_CA_BUNDLE=str(path)), *cmd)
            assert r.returncode == 2, (path, cmd, r.stderr)
            line = one_line(r)
            assert f"CA bundle {path} (from AWS_CA_BUNDLE): {words}" in line, line
    assert s3.objects() == [] and s3.uploads() == []
    assert proxy.seen == []  # refused before any request


# -- the policy and the bundle, in-process -------------------------------------------------


def test_sign_payload_policy(monkeypatch):
    monkeypatch.delenv("DSBACKUP_S3_SIGN_PAYLOAD", raising=False)
    assert s3config.sign_payload("http://127.0.0.1:9000") is True
    assert s3config.sign_payload("https://minio.example:9000") is False
    assert s3config.sign_payload(None) is False  # AWS itself: https
    for on in ("1", "true", "always"):
        monkeypatch.setenv("DSBACKUP_S3_SIGN_PAYLOAD", on)
        assert s3config.sign_payload("https://minio.example") is True
    monkeypatch.setenv("DSBACKUP_S3_SIGN_PAYLOAD", "0")
    assert s3config.sign_payload("http://127.0.0.1:9000") is True  # never unsigned over http
    monkeypatch.setenv("DSBACKUP_S3_SIGN_PAYLOAD", "maybe")
    with pytest.raises(ConfigError, match="DSBACKUP_S3_SIGN_PAYLOAD"):
        s3config.sign_payload("https://x")


def test_ca_bundle_adds_to_the_system_roots(monkeypatch, pki, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    assert s3tls.ca_bundle() is None
    system = s3tls.ssl_context().cert_store_stats()["x509_ca"]
    monkeypatch.setenv("AWS_CA_BUNDLE", str(pki.ca))
    b = s3tls.ca_bundle()
    assert b is not None and b.source == "AWS_CA_BUNDLE" and b.pem == pki.ca.read_bytes()
    assert s3tls.ssl_context().cert_store_stats()["x509_ca"] == system + 1


def test_our_own_gets_name_tls_failures_as_the_obstore_client_does():
    """s3get's errors (the open's GET, blocks, spans) use the same words: an https endpoint
    that speaks plain http, a certificate nobody trusts."""
    import http.client
    import http.server
    import ssl
    import threading

    from dsbackup.storage.s3tls import tls_failure

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        conn = http.client.HTTPSConnection("127.0.0.1", srv.server_address[1], timeout=5,
                                           context=ssl.create_default_context())
        with pytest.raises(ssl.SSLError) as exc:
            conn.request("GET", "/")
        assert tls_failure(exc.value).startswith("TLS handshake failed: ")
        assert tls_failure(exc.value).endswith("(is the endpoint really https?)")
    finally:
        srv.shutdown()
        srv.server_close()
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_code, err.verify_message = 20, "unable to get local issuer certificate"
    assert tls_failure(err) == ("TLS: the server's certificate was rejected: signed by a CA "
                                "that is not trusted; for a private CA, name its certificate "
                                "in AWS_CA_BUNDLE")
    err.verify_code, err.verify_message = 10, "certificate has expired"
    assert tls_failure(err).endswith("rejected: it has expired")


# -- a TLS failure is not retried ------------------------------------------------------------


class _Listener:
    """A server on 127.0.0.1 that answers each connection with a TLS handshake (`tls`: its
    context) or a plain-http 400; counts the connections."""

    def __init__(self, tls=None) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.tls, self.connections = tls, 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import contextlib

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with contextlib.suppress(OSError), conn:
                conn.settimeout(5)
                if self.tls is not None:
                    with self.tls.wrap_socket(conn, server_side=True) as s:
                        s.recv(100)
                else:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("server", ["untrusted-certificate", "plain-http"])
def test_a_tls_failure_fails_at_once_naming_the_endpoint(tmp_path, pki, store, server,
                                                         cli_env):
    """A certificate nobody trusts (the run's self-signed CA, not named) or an https endpoint
    that speaks plain http was retried for the whole retry window (here 30 s, 100 retries)
    before exit 2; now: exit 2 at once, one line naming the endpoint and the TLS error."""
    import time

    srv = _Listener(pki.server_context() if server != "plain-http" else None)
    endpoint = f"https://127.0.0.1:{srv.port}"
    env = {k: v for k, v in cli_env.items() if not k.startswith(("AWS_", "DSBACKUP_S3"))}
    env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=ACCESS_KEY,
               AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE=str(tmp_path / "none"), DSBACKUP_S3_RETRIES="100",
               DSBACKUP_S3_TIMEOUT="30")
    want = ("TLS: the server's certificate was rejected: signed by a CA that is not trusted"
            if server != "plain-http" else "(is the endpoint really https?)")
    try:
        for cmd in (("backup", f"lmdb:{store}", "s3://tls-bucket/x.dsb"),
                    ("verify", "s3://tls-bucket/x.dsb"), ("ls", "s3://tls-bucket/x.dsb"),
                    ("prune", "s3://tls-bucket/", "--keep-last", "1")):
            t0 = time.monotonic()
            r = cli(env, *cmd)
            took = time.monotonic() - t0
            assert took < 10, (cmd, took, r.stderr)  # the retry window is 30 s
            assert r.returncode == 2, (cmd, r.stderr)
            line = [ln for ln in r.stderr.splitlines() if ln.strip()]
            assert len(line) == 1 and "Traceback" not in r.stderr, r.stderr
            assert f"S3 endpoint {endpoint}: " in line[0] and want in line[0], line
            no_secret(r)
    finally:
        srv.close()


def test_only_tls_failures_no_retry_mends_are_permanent():
    import ssl

    from dsbackup.storage.s3tls import permanent

    assert permanent(ssl.SSLCertVerificationError(1, "certificate verify failed"))
    wrong = ssl.SSLError(1, "wrong version number")
    wrong.reason = "WRONG_VERSION_NUMBER"
    assert permanent(wrong)
    # a connection cut during the handshake, a reset, a refusal: retried as before
    assert not permanent(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"))
    assert not permanent(ConnectionResetError(104, "reset"))
    assert not permanent(ConnectionRefusedError(111, "refused"))


def test_the_handshake_check_names_the_endpoint_and_leaves_proxies_alone(pki, monkeypatch):
    from dsbackup.errors import ArchiveUnavailable
    from dsbackup.storage.s3tls import check_endpoint

    srv = _Listener(pki.server_context())
    try:
        for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(v, raising=False)
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        with pytest.raises(ArchiveUnavailable, match=rf"S3 endpoint https://127.0.0.1:"
                                                     rf"{srv.port}: TLS: the server's"):
            check_endpoint(f"https://127.0.0.1:{srv.port}", "127.0.0.1", srv.port)
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # the client's way
        check_endpoint(f"https://127.0.0.1:{srv.port}", "127.0.0.1", srv.port)
    finally:
        srv.close()
