"""Where temporary AWS credentials come from, for tests of dsbackup/storage/s3creds.py:

- :class:`CredServer`, one HTTP server on 127.0.0.1 that plays the EC2 instance metadata
  service (IMDSv2: token, role name, the role's credentials), the ECS/EKS container
  credentials endpoint, STS (``AssumeRoleWithWebIdentity``; an ``AssumeRole`` is answered
  alike), the IAM Identity Center portal (``GetRoleCredentials``) and its OIDC service
  (``CreateToken`` with a refresh token), in the formats AWS documents, counting what it is
  asked;
- :class:`AuthMoto`, moto's server in a process of its own with IAM authentication on: it
  accepts only the temporary keys of a role (made by its own STS before authentication is
  turned on, handed out by the fake services above) and checks each request's signature and
  session token. (The suite's shared moto server accepts any key.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs

from quiethttp import QuietHTTPServer

ROLE = "dsb-backup-role"
ROLE_ARN = f"arn:aws:iam::123456789012:role/{ROLE}"
USER = "dsb-backup-user"
IMDS_TOKEN = "imds-session-token-0123456789"

_MOTO = r"""
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
s = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
s.start()
print(s.get_host_and_port()[1], flush=True)
sys.stdin.read()
s.stop()
"""


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class AuthMoto:
    """moto with IAM authentication: `keys` are temporary credentials of a role allowed s3:*
    and sts:AssumeRole, each a dict (AccessKeyId, SecretAccessKey, SessionToken);
    `user_key` (AccessKeyId, SecretAccessKey) the keys of a user allowed sts:AssumeRole
    only."""

    def __init__(self, bucket: str, n_keys: int = 4) -> None:
        env = dict(os.environ)
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        self.proc = subprocess.Popen([sys.executable, "-c", _MOTO], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.strip():
            raise RuntimeError("moto did not start")
        self.port = int(line)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = bucket
        import boto3

        kw = {"endpoint_url": self.endpoint, "region_name": "us-east-1",
              "aws_access_key_id": "AKIASETUPONLY0000000", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", **kw)
        iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*",
                                                    "Principal": {"AWS": "*"}}]}))
        iam.put_role_policy(RoleName=ROLE, PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": [
                "s3:*", "sts:AssumeRole"], "Resource": "*"}]}))  # (a chain: role to role)
        # a user whose long-term keys may do nothing but assume the role (a source_profile)
        iam.create_user(UserName=USER)
        iam.put_user_policy(UserName=USER, PolicyName="assume", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                                                    "Action": "sts:AssumeRole",
                                                    "Resource": "*"}]}))
        self.user_key = iam.create_access_key(UserName=USER)["AccessKey"]
        sts = boto3.client("sts", **kw)
        self.keys = [sts.assume_role(RoleArn=ROLE_ARN, RoleSessionName=f"s{i}")["Credentials"]
                     for i in range(n_keys)]
        boto3.client("s3", **kw).create_bucket(Bucket=bucket)
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0",
                                     method="POST", headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=10).read()  # from now on: IAM authentication

    def client(self, key: int = 0):
        import boto3

        k = self.keys[key]
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=k["AccessKeyId"],
                            aws_secret_access_key=k["SecretAccessKey"],
                            aws_session_token=k["SessionToken"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class CredServer:
    """IMDSv2 (``/latest/...``), container credentials (``/container/...``, checking the
    Authorization header against `container_token`) and STS (``POST /``). `creds()` gives the
    next credentials handed out: (key dict, expiration); `fail` maps a path prefix to a status
    it answers instead; `sts_error` an STS error (code, message)."""

    def __init__(self, creds: Callable[[], tuple[dict[str, str], datetime]]) -> None:
        self.creds = creds
        self.calls: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.fail: dict[str, int] = {}
        self.container_token = ""
        self.sts_error: tuple[str, str] | None = None
        self.sts_forms: list[dict[str, list[str]]] = []
        self.sso_token = ""  # the SSO portal's valid bearer token
        self.sso_refresh = ""  # the OIDC service's valid refresh token
        self.oidc_requests: list[dict[str, str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with server.lock:
                    server.calls.append(f"{self.command} {self.path}")
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                for prefix, status in server.fail.items():
                    if self.path.startswith(prefix) or f"{self.command} {self.path}" \
                            .startswith(prefix):
                        self._send(status, b"<Error>no</Error>")
                        return
                if self.path.startswith("/latest/"):
                    self._imds()
                elif self.path.startswith("/container/"):
                    if self.headers.get("Authorization") != server.container_token:
                        self._send(401, b'{"message": "unauthorized"}')
                        return
                    self._send(200, server._json(), "application/json")
                elif self.command == "POST" and self.path == "/":
                    self._sts(parse_qs(body.decode()))
                elif self.path.startswith("/federation/credentials"):
                    self._sso()
                elif self.command == "POST" and self.path == "/token":
                    self._oidc(json.loads(body))
                else:
                    self._send(404, b"not found")

            def _imds(self) -> None:
                if self.command == "PUT" and self.path == "/latest/api/token":
                    if not self.headers.get("x-aws-ec2-metadata-token-ttl-seconds"):
                        self._send(400, b"missing ttl")
                        return
                    self._send(200, IMDS_TOKEN.encode())
                    return
                if self.headers.get("x-aws-ec2-metadata-token") != IMDS_TOKEN:
                    self._send(401, b"")  # IMDSv2 required
                    return
                base = "/latest/meta-data/iam/security-credentials/"
                if self.path == base:
                    self._send(200, ROLE.encode())
                elif self.path == base + ROLE:
                    self._send(200, server._json(), "text/plain")
                else:
                    self._send(404, b"")

            def _sts(self, form: dict[str, list[str]]) -> None:
                server.sts_forms.append(form)
                if server.sts_error is not None:
                    code, msg = server.sts_error
                    doc = (f"<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"
                           f"<Error><Type>Sender</Type><Code>{code}</Code><Message>{msg}"
                           "</Message></Error><RequestId>r</RequestId></ErrorResponse>")
                    self._send(400, doc.encode(), "text/xml")
                    return
                k, exp = server.creds()
                doc = ("<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/"
                       "doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult>"
                       "<SubjectFromWebIdentityToken>sub</SubjectFromWebIdentityToken>"
                       "<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/"
                       f"{ROLE}/s</Arn><AssumedRoleId>AROA:s</AssumedRoleId></AssumedRoleUser>"
                       f"<Credentials><SessionToken>{k['SessionToken']}</SessionToken>"
                       f"<SecretAccessKey>{k['SecretAccessKey']}</SecretAccessKey>"
                       f"<Expiration>{iso(exp)}</Expiration>"
                       f"<AccessKeyId>{k['AccessKeyId']}</AccessKeyId></Credentials>"
                       "<Provider>oidc</Provider></AssumeRoleWithWebIdentityResult>"
                       "<ResponseMetadata><RequestId>r</RequestId></ResponseMetadata>"
                       "</AssumeRoleWithWebIdentityResponse>")
                self._send(200, doc.encode(), "text/xml")

            def _sso(self) -> None:
                if self.headers.get("x-amz-sso_bearer_token") != server.sso_token:
                    self._send(401, b'{"message": "Session token not found or invalid"}',
                               "application/json")
                    return
                k, exp = server.creds()
                self._send(200, json.dumps({"roleCredentials": {
                    "accessKeyId": k["AccessKeyId"], "secretAccessKey": k["SecretAccessKey"],
                    "sessionToken": k["SessionToken"],
                    "expiration": int(exp.timestamp() * 1000)}}).encode(), "application/json")

            def _oidc(self, doc: dict[str, str]) -> None:
                server.oidc_requests.append(doc)
                if doc.get("grantType") != "refresh_token" or \
                        doc.get("refreshToken") != server.sso_refresh:
                    self._send(400, b'{"error": "invalid_grant"}', "application/json")
                    return
                server.sso_token = f"sso-access-SECRET-{len(server.oidc_requests)}"
                server.sso_refresh = f"sso-refresh-SECRET-{len(server.oidc_requests)}"
                self._send(200, json.dumps({"accessToken": server.sso_token,
                                            "tokenType": "Bearer", "expiresIn": 3600,
                                            "refreshToken": server.sso_refresh}).encode(),
                           "application/json")

            do_GET = do_PUT = do_POST = _any

        self._httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def _json(self) -> bytes:
        k, exp = self.creds()
        return json.dumps({"Code": "Success", "LastUpdated": iso(datetime.now(timezone.utc)),
                           "Type": "AWS-HMAC", "AccessKeyId": k["AccessKeyId"],
                           "SecretAccessKey": k["SecretAccessKey"], "Token": k["SessionToken"],
                           "Expiration": iso(exp)}).encode()

    def count(self, text: str) -> int:
        with self.lock:
            return sum(text in c for c in self.calls)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def rotating(keys: list[dict[str, str]], lifetime: timedelta
             ) -> Callable[[], tuple[dict[str, str], datetime]]:
    """Hands out the keys in turn, each valid for `lifetime` from the moment it is asked."""
    state = {"i": 0}
    lock = threading.Lock()

    def creds() -> tuple[dict[str, str], datetime]:
        with lock:
            k = keys[state["i"] % len(keys)]
            state["i"] += 1
        return k, datetime.now(timezone.utc) + lifetime

    return creds

