"""Credentials named by an AWS profile (dsbackup/storage/s3profile.py and the sources it
names: s3assume.py, s3process.py, s3sso.py): a role assumed through STS from a source
profile (a chain of two roles) or from the environment, a credential_process (real
subprocesses), an IAM Identity Center (SSO) role from the AWS CLI's token cache, and
botocore's order between them. moto plays STS and S3 with IAM authentication on (it checks
every signature and session token); tests/support/credserver.py plays the SSO portal and its
OIDC service, and STS where the request itself is looked at. Before, none of these profiles
gave credentials: a backup with them fell through to the instance's metadata."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from credserver import ROLE_ARN, AuthMoto, CredServer, iso, rotating

from dsbackup import datasets
from dsbackup.errors import S3ApiError
from dsbackup.storage import s3creds

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")
START_URL = "https://corp.awsapps.com/start"


def cli(env, *args, timeout=240):
    return subprocess.run([sys.executable, "-m", "dsbackup", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def moto_auth():
    m = AuthMoto("dsb-profile")
    yield m
    m.stop()


@pytest.fixture
def aws(moto_auth, monkeypatch, tmp_path):
    """No keys in the environment; HOME, ~/.aws/config and ~/.aws/credentials in tmp_path;
    moto the endpoint of S3 and STS; for CLI children and this process."""
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DSBACKUP_S3_"))}
    env.update(PYTHONPATH=os.path.abspath(SRC), HOME=str(home), AWS_REGION="us-east-1",
               AWS_ENDPOINT_URL=moto_auth.endpoint, AWS_EC2_METADATA_DISABLED="true",
               DSBACKUP_S3_RETRIES="1", DSBACKUP_S3_TIMEOUT="10")
    for k in list(os.environ):
        if k.startswith(("AWS_", "DSBACKUP_S3_")):
            monkeypatch.delenv(k)
    for k, v in env.items():
        if k.startswith(("AWS_", "DSBACKUP_S3_")) or k == "HOME":
            monkeypatch.setenv(k, v)
    from dsbackup.storage import s3, s3config

    monkeypatch.setattr(s3config, "_settings", s3config.S3Settings())
    monkeypatch.setattr(s3config, "_tuned", False)
    monkeypatch.setattr(s3config, "_stale_given", False)
    s3.reset()
    yield env
    s3.reset()


def write(env, config: str = "", credentials: str = "") -> None:
    aws_dir = os.path.join(env["HOME"], ".aws")
    with open(os.path.join(aws_dir, "config"), "w") as f:
        f.write(textwrap.dedent(config))
    with open(os.path.join(aws_dir, "credentials"), "w") as f:
        f.write(textwrap.dedent(credentials))


def small_store(tmp_path):
    src = tmp_path / "src"
    datasets.write_lmdb(str(src), datasets.iter_small(200))
    return src


# -- AssumeRole ----------------------------------------------------------------------------


def test_a_chain_of_roles_from_a_source_profile_backs_up(moto_auth, aws, tmp_path):
    """top assumes the role with the credentials of mid, which assumes it with the user keys
    of base: moto checks both AssumeRole signatures and the S3 requests' session tokens."""
    user = moto_auth.user_key
    write(aws, f"""
        [profile mid]
        role_arn = {ROLE_ARN}
        source_profile = base
        role_session_name = dsb-mid

        [profile top]
        role_arn = {ROLE_ARN}
        source_profile = mid
        external_id = ext-1
        duration_seconds = 900
        """, f"""
        [base]
        aws_access_key_id = {user['AccessKeyId']}
        aws_secret_access_key = {user['SecretAccessKey']}
        """)
    src = small_store(tmp_path)
    url = f"s3://{moto_auth.bucket}/r{uuid.uuid4().hex[:8]}/full.dsb"
    r = cli(dict(aws, AWS_PROFILE="top"), "-v", "-v", "backup", f"lmdb:{src}", url)
    assert r.returncode == 0, r.stderr
    r2 = cli(dict(aws, AWS_PROFILE="top"), "verify", url)
    assert r2.returncode == 0, r2.stderr
    # the user's keys alone may not read S3: the role was used
    bad = dict(aws, AWS_PROFILE="base")
    r3 = cli(bad, "verify", url)
    assert r3.returncode != 0 and "Traceback" not in r3.stderr
    # the environment's keys come before AWS_PROFILE's role (botocore's order) ...
    env_keys = dict(aws, AWS_PROFILE="top", AWS_ACCESS_KEY_ID="AKIAENVKEYNOTKNOWN00",
                    AWS_SECRET_ACCESS_KEY="env-SECRET-not-known")
    r4 = cli(env_keys, "verify", url)
    assert r4.returncode != 0
    # ... but not before a profile named on the command line
    r5 = cli(env_keys, "--s3-profile", "top", "verify", url)
    assert r5.returncode == 0, r5.stderr
    for out in (r, r2, r3, r4, r5):
        text = out.stdout + out.stderr
        assert user["SecretAccessKey"] not in text and "env-SECRET-not-known" not in text


def test_assume_role_request_and_refresh(moto_auth, aws, monkeypatch):
    """The form AWS documents, signed for sts with the source's keys; credentials inside
    the mandatory margin are fetched again at each call, from the source again."""
    from dsbackup.storage import s3config

    sts = CredServer(rotating(moto_auth.keys, timedelta(seconds=s3creds.MANDATORY_REFRESH_S
                                                       - 5)))
    write(aws, f"""
        [profile envrole]
        role_arn = {ROLE_ARN}
        credential_source = Environment
        external_id = ext-9
        role_session_name = nightly
        duration_seconds = 3600
        """)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENVSOURCE0000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-source-SECRET")
    s3config.configure(profile="envrole")
    cfg = s3config.client_config()
    assert "secret_access_key" not in cfg  # the role's, not the environment's keys
    first = s3creds.chain()()
    assert first.access_key_id == moto_auth.keys[0]["AccessKeyId"] and first.expires
    form = sts.sts_forms[0]
    assert {k: v[0] for k, v in form.items()} == {
        "Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": ROLE_ARN,
        "RoleSessionName": "nightly", "ExternalId": "ext-9", "DurationSeconds": "3600"}
    auth = sts.headers[0]["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIAENVSOURCE0000001/")
    assert "/us-east-1/sts/aws4_request" in auth and "x-amz-security-token" not in sts.headers[0]
    second = s3creds.chain()()
    assert second.access_key_id == moto_auth.keys[1]["AccessKeyId"]
    assert len(sts.sts_forms) == 2
    sts.stop()


@pytest.mark.parametrize("config, message", [
    ("[profile p]\nrole_arn = {arn}\nsource_profile = base\nmfa_serial = arn:aws:iam::1:mfa/u\n"
     "[profile base]\naws_access_key_id = AKIAX\naws_secret_access_key = s3cr3t\n",
     r"profile p of .*: the role needs an MFA code \(mfa_serial\), which a backup cannot ask"),
    ("[profile p]\nrole_arn = {arn}\nsource_profile = q\n"
     "[profile q]\nrole_arn = {arn}\nsource_profile = p\n",
     r"profile q of .*: source_profile loops \(p -> q -> p\)"),
    ("[profile p]\nrole_arn = {arn}\nsource_profile = q\ncredential_source = Environment\n",
     "both source_profile and credential_source are set"),
    ("[profile p]\nrole_arn = {arn}\n", "role_arn needs source_profile or credential_source"),
    ("[profile p]\nrole_arn = {arn}\ncredential_source = Ec2Metadata\n",
     "credential_source 'Ec2Metadata': expected one of Environment, Ec2InstanceMetadata, "
     "EcsContainer"),
    ("[profile p]\nrole_arn = {arn}\nsource_profile = nowhere\n",
     "AWS profile 'nowhere' is not in"),
    ("[profile p]\nrole_arn = {arn}\nsource_profile = empty\n[profile empty]\nregion = x\n",
     "source_profile 'empty' .* gives no credentials"),
    ("[profile p]\nrole_arn = {arn}\ncredential_source = Environment\nduration_seconds = 60\n",
     "duration_seconds '60': expected 900 to 43200"),
    ("[profile p]\nsso_account_id = 1\nsso_role_name = r\nsso_start_url = u\n",
     "is set up for SSO but lacks sso_region"),
    ("[profile p]\nsso_session = corp\nsso_account_id = 1\nsso_role_name = r\n",
     r"sso_session 'corp' has no \[sso-session corp\] section"),
    ("[profile p]\ncredential_process = \"unclosed\n", "cannot split the command line"),
])
def test_profile_settings_that_cannot_work_are_one_line(aws, monkeypatch, config, message):
    write(aws, config.format(arn=ROLE_ARN))
    monkeypatch.setenv("AWS_PROFILE", "p")
    with pytest.raises(S3ApiError, match=f"^S3 credentials: .*{message}"):
        s3creds.chain()()
    if "mfa" in config:  # from the CLI: exit 2, one line
        r = cli(dict(aws, AWS_PROFILE="p"), "prune", "s3://dsb-profile/x/", "--keep-last", "1")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "mfa_serial" in r.stderr and "s3cr3t" not in r.stderr


def test_botocore_order_of_a_profiles_keys_and_sources(aws, monkeypatch):
    from dsbackup.storage import s3config

    keys = "aws_access_key_id = AKIAFILE000000000001\naws_secret_access_key = file-SECRET\n"
    # keys in the credentials file come before credential_process ...
    write(aws, "[default]\ncredential_process = /bin/false\n", "[default]\n" + keys)
    assert s3config.client_config()["access_key_id"] == "AKIAFILE000000000001"
    # ... the config file's after it
    write(aws, "[default]\ncredential_process = /bin/false\n" + keys)
    assert "access_key_id" not in s3config.client_config()
    # a role comes before the profile's keys (and a source profile's keys before its role)
    write(aws, f"[default]\nrole_arn = {ROLE_ARN}\nsource_profile = default\n" + keys)
    assert "access_key_id" not in s3config.client_config()
    # SSO too; a bare [name] in the config file is not a profile (botocore)
    write(aws, "[profile s]\nsso_session = x\n[k]\n" + keys, "[s]\n" + keys)
    monkeypatch.setenv("AWS_PROFILE", "s")
    assert "access_key_id" not in s3config.client_config()
    monkeypatch.setenv("AWS_PROFILE", "k")
    assert "access_key_id" not in s3config.client_config()
    # the environment's keys before everything, unless --s3-profile names the profile
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV0000000000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-SECRET")
    monkeypatch.setenv("AWS_PROFILE", "s")
    assert s3config.client_config()["access_key_id"] == "AKIAENV0000000000001"
    write(aws, "[profile s]\nregion = eu-west-3\n", "[s]\n" + keys)
    s3config.configure(profile="s")
    monkeypatch.delenv("AWS_REGION")
    cfg = s3config.client_config()
    assert cfg["access_key_id"] == "AKIAFILE000000000001" and cfg["region"] == "eu-west-3"


# -- credential_process --------------------------------------------------------------------

PROCESS = r"""
import json, os, sys
from datetime import datetime, timedelta, timezone
state = sys.argv[1]
with open(state) as f:
    doc = json.load(f)
n = doc.get("runs", 0)
doc["runs"] = n + 1
with open(state, "w") as f:
    json.dump(doc, f)
if doc.get("fail"):
    print(json.dumps({"Version": 1, "AccessKeyId": "x", "SecretAccessKey": doc["leak"]}))
    print("first line", file=sys.stderr)
    print("denied: the vault is sealed", file=sys.stderr)
    sys.exit(3)
if doc.get("hang"):
    with open(state + ".pid", "w") as f:
        f.write(str(os.getpid()))
    import time
    time.sleep(120)
k = doc["keys"][n % len(doc["keys"])]
out = {"Version": doc.get("version", 1), "AccessKeyId": k["AccessKeyId"],
       "SecretAccessKey": k["SecretAccessKey"], "SessionToken": k["SessionToken"]}
if doc.get("life") is not None:
    t = datetime.now(timezone.utc) + timedelta(seconds=doc["life"])
    out["Expiration"] = t.strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps(out))
"""


def process_profile(aws, tmp_path, moto_auth, **state):
    script = tmp_path / "creds tool.py"  # a space in the path: quoted in the config
    script.write_text(PROCESS)
    state_file = tmp_path / "state.json"
    keys = [{k: key[k] for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")}
            for key in moto_auth.keys]
    state_file.write_text(json.dumps(dict(state, keys=keys)))
    write(aws, f'[profile proc]\ncredential_process = {sys.executable} "{script}" '
               f'{state_file}\n')
    return state_file


def runs(state_file) -> int:
    return json.loads(state_file.read_text())["runs"]


def test_credential_process_backs_up_with_one_run(moto_auth, aws, tmp_path):
    state = process_profile(aws, tmp_path, moto_auth, life=3600)
    src = small_store(tmp_path)
    url = f"s3://{moto_auth.bucket}/p{uuid.uuid4().hex[:8]}/full.dsb"
    env = dict(aws, AWS_PROFILE="proc")
    r = cli(env, "-v", "-v", "backup", f"lmdb:{src}", url)
    assert r.returncode == 0, r.stderr
    assert runs(state) == 1  # one run for the process: ours and obstore's requests
    r2 = cli(env, "ls", url)
    assert r2.returncode == 0, r2.stderr
    for out in (r, r2):
        for k in moto_auth.keys:
            assert k["SecretAccessKey"] not in out.stdout + out.stderr
            assert k["SessionToken"] not in out.stdout + out.stderr


def test_credential_process_expiration_is_honoured(moto_auth, aws, tmp_path, monkeypatch):
    state = process_profile(aws, tmp_path, moto_auth, life=s3creds.MANDATORY_REFRESH_S - 5)
    monkeypatch.setenv("AWS_PROFILE", "proc")
    a = s3creds.chain()()
    b = s3creds.chain()()  # inside the mandatory margin: run again
    assert runs(state) == 2 and a.access_key_id != b.access_key_id and b.expires
    s3creds.reset()
    state = process_profile(aws, tmp_path, moto_auth, life=None)  # no Expiration: kept
    for _ in range(3):
        assert s3creds.chain()().expires is None
    assert runs(state) == 1


def test_a_failing_credential_process_is_one_line_without_its_output(moto_auth, aws,
                                                                       tmp_path):
    leak = "stdout-SECRET-must-not-show"
    process_profile(aws, tmp_path, moto_auth, fail=True, leak=leak)
    r = cli(dict(aws, AWS_PROFILE="proc"), "-v", "-v", "prune",
            f"s3://{moto_auth.bucket}/x/", "--keep-last", "1")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "S3 credentials from credential_process of profile proc of " in lines[0]
    assert lines[0].endswith("the command exited with status 3: denied: the vault is sealed")
    assert leak not in r.stdout + r.stderr


def test_a_hanging_credential_process_is_killed(moto_auth, aws, tmp_path, monkeypatch):
    state = process_profile(aws, tmp_path, moto_auth, hang=True)
    monkeypatch.setenv("AWS_PROFILE", "proc")
    monkeypatch.setenv("DSBACKUP_S3_CREDENTIAL_PROCESS_TIMEOUT", "1")
    t = time.monotonic()
    with pytest.raises(S3ApiError, match=r"the command gave no credentials within 1 s "
                       r"\(DSBACKUP_S3_CREDENTIAL_PROCESS_TIMEOUT\); killed$"):
        s3creds.chain()()
    assert time.monotonic() - t < 20
    pid = int((tmp_path / "state.json.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert runs(state) == 1


@pytest.mark.parametrize("state, message", [
    ({"version": 2}, "the command's output has Version 2; expected 1"),
    ({"life": -60}, r"the credentials it gave expired at"),
])
def test_credential_process_output_is_checked(moto_auth, aws, tmp_path, monkeypatch, state,
                                              message):
    process_profile(aws, tmp_path, moto_auth, **state)
    monkeypatch.setenv("AWS_PROFILE", "proc")
    with pytest.raises(S3ApiError, match=message):
        s3creds.chain()()


# -- SSO -----------------------------------------------------------------------------------


def sso_setup(aws, monkeypatch, moto_auth, key: str, token: dict, legacy: bool = False):
    portal = CredServer(rotating(moto_auth.keys, timedelta(hours=1)))
    portal.sso_token = "sso-access-SECRET-0"
    if legacy:
        write(aws, f"""
            [profile dev]
            sso_start_url = {START_URL}
            sso_region = us-east-1
            sso_account_id = 123456789012
            sso_role_name = Backup
            """)
    else:
        write(aws, f"""
            [profile dev]
            sso_session = corp
            sso_account_id = 123456789012
            sso_role_name = Backup

            [sso-session corp]
            sso_start_url = {START_URL}
            sso_region = us-east-1
            """)
    cache = os.path.join(aws["HOME"], ".aws", "sso", "cache")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, hashlib.sha1(key.encode()).hexdigest() + ".json")
    with open(path, "w") as f:
        json.dump(dict({"startUrl": START_URL, "region": "us-east-1"}, **token), f)
    for name in ("AWS_ENDPOINT_URL_SSO", "AWS_ENDPOINT_URL_SSO_OIDC"):
        monkeypatch.setenv(name, portal.url)
        aws[name] = portal.url
    return portal, path


def test_sso_profile_backs_up_with_the_cached_token(moto_auth, aws, tmp_path, monkeypatch):
    later = iso(datetime.now(timezone.utc) + timedelta(hours=8))
    portal, _ = sso_setup(aws, monkeypatch, moto_auth, "corp",
                          {"accessToken": "sso-access-SECRET-0", "expiresAt": later})
    src = small_store(tmp_path)
    url = f"s3://{moto_auth.bucket}/s{uuid.uuid4().hex[:8]}/full.dsb"
    env = dict(aws, AWS_PROFILE="dev")
    r = cli(env, "-v", "-v", "backup", f"lmdb:{src}", url)
    assert r.returncode == 0, r.stderr
    assert portal.calls == ["GET /federation/credentials?account_id=123456789012&"
                            "role_name=Backup"]
    assert portal.headers[0]["x-amz-sso_bearer_token"] == "sso-access-SECRET-0"
    # the portal refuses the token (revoked): run aws sso login
    portal.sso_token = "another"
    r2 = cli(env, "ls", url)
    assert r2.returncode == 2 and len(r2.stderr.strip().splitlines()) == 1, r2.stderr
    assert "the portal refused the SSO token (expired or revoked: HTTP 401: Session token " \
           "not found or invalid); run: aws sso login --profile dev" in r2.stderr
    for out in (r, r2):
        assert "sso-access-SECRET-0" not in out.stdout + out.stderr
    portal.stop()


def test_an_expired_sso_token_says_to_log_in(moto_auth, aws, monkeypatch):
    before = iso(datetime.now(timezone.utc) - timedelta(minutes=1))
    portal, _ = sso_setup(aws, monkeypatch, moto_auth, START_URL,
                          {"accessToken": "sso-access-SECRET-0", "expiresAt": before},
                          legacy=True)
    r = cli(dict(aws, AWS_PROFILE="dev"), "prune", f"s3://{moto_auth.bucket}/x/",
            "--keep-last", "1")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().endswith("the SSO token expired at "
                                     f"{before[:10]} {before[11:19]} UTC; run: aws sso login "
                                     "--profile dev"), r.stderr
    assert portal.calls == []
    monkeypatch.setenv("AWS_PROFILE", "dev")
    os.unlink(os.path.join(aws["HOME"], ".aws", "sso", "cache",
                           hashlib.sha1(START_URL.encode()).hexdigest() + ".json"))
    with pytest.raises(S3ApiError, match=r"no SSO token in .*\.json \(not logged in\); run: "
                       "aws sso login --profile dev$"):
        s3creds.chain()()
    portal.stop()


def test_an_sso_token_about_to_expire_is_refreshed_and_written_back(moto_auth, aws,
                                                                    monkeypatch):
    soon = iso(datetime.now(timezone.utc) + timedelta(minutes=5))
    portal, path = sso_setup(aws, monkeypatch, moto_auth, "corp", {
        "accessToken": "sso-access-SECRET-old", "expiresAt": soon,
        "refreshToken": "sso-refresh-SECRET-0", "clientId": "cid",
        "clientSecret": "client-SECRET-value",
        "registrationExpiresAt": iso(datetime.now(timezone.utc) + timedelta(days=30))})
    portal.sso_refresh = "sso-refresh-SECRET-0"
    monkeypatch.setenv("AWS_PROFILE", "dev")
    creds = s3creds.chain()()
    assert creds.access_key_id == moto_auth.keys[0]["AccessKeyId"]
    assert portal.oidc_requests == [{"grantType": "refresh_token", "clientId": "cid",
                                     "clientSecret": "client-SECRET-value",
                                     "refreshToken": "sso-refresh-SECRET-0"}]
    assert portal.headers[-1]["x-amz-sso_bearer_token"] == "sso-access-SECRET-1"
    with open(path) as f:
        cached = json.load(f)
    assert cached["accessToken"] == "sso-access-SECRET-1"
    assert cached["refreshToken"] == "sso-refresh-SECRET-1" and cached["clientId"] == "cid"
    assert datetime.fromisoformat(cached["expiresAt"].replace("Z", "+00:00")) > \
        datetime.now(timezone.utc) + timedelta(minutes=50)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    portal.stop()


def test_the_schedulers_s3_profile_is_used_before_the_environments_keys(moto_auth, aws,
                                                                          tmp_path):
    state = process_profile(aws, tmp_path, moto_auth, life=3600)
    src = small_store(tmp_path)
    prefix = f"q{uuid.uuid4().hex[:8]}/"
    cfg = tmp_path / "dsbackup.toml"
    cfg.write_text(textwrap.dedent(f"""
        [scheduler]
        backup_dir = "s3://{moto_auth.bucket}/{prefix}"
        s3_profile = "proc"
        state_dir = "{tmp_path / 'state'}"

        [[schedule]]
        id = "ipfs"
        name = "ipfs-node"
        cron = "@daily"
        source = "lmdb:{src}"
        """))
    env = dict(aws, AWS_ACCESS_KEY_ID="AKIAENVKEYNOTKNOWN00",
               AWS_SECRET_ACCESS_KEY="env-SECRET-not-known")
    r = cli(env, "schedule", "run-once", "ipfs", "--config", cfg, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert runs(state) == 1
    listed = moto_auth.client().list_objects_v2(Bucket=moto_auth.bucket, Prefix=prefix)
    assert [o["Key"].startswith(prefix + "ipfs-node_") for o in listed["Contents"]] == [True]


def test_a_role_assumed_from_a_profile_with_a_credential_process(moto_auth, aws, tmp_path,
                                                                   monkeypatch):
    """A source profile without keys gives what its credential_process prints (here the
    user's keys); the role assumed with them lists the bucket, through both clients."""
    from dsbackup.storage import s3
    from dsbackup.storage.s3api import S3Api

    script = tmp_path / "user.py"
    user = moto_auth.user_key
    script.write_text("import json\nprint(json.dumps({'Version': 1, 'AccessKeyId': "
                      f"{user['AccessKeyId']!r}, 'SecretAccessKey': "
                      f"{user['SecretAccessKey']!r}}}))\n")
    write(aws, f"""
        [profile tool]
        credential_process = {sys.executable} {script}

        [profile backup]
        role_arn = {ROLE_ARN}
        source_profile = tool
        """)
    monkeypatch.setenv("AWS_PROFILE", "backup")
    assert list(S3Api.from_config().list_multipart_uploads(moto_auth.bucket, "t/")) == []
    assert s3.list_archives(s3.S3Location(moto_auth.bucket, "t/")) == []
    creds = s3creds.chain()()
    assert creds.access_key_id != user["AccessKeyId"] and creds.session_token


def test_sso_role_credentials_are_asked_for_again_before_they_expire(moto_auth, aws,
                                                                     monkeypatch):
    later = iso(datetime.now(timezone.utc) + timedelta(hours=8))
    portal, _ = sso_setup(aws, monkeypatch, moto_auth, "corp",
                          {"accessToken": "sso-access-SECRET-0", "expiresAt": later})
    portal.creds = rotating(moto_auth.keys, timedelta(seconds=s3creds.MANDATORY_REFRESH_S - 5))
    monkeypatch.setenv("AWS_PROFILE", "dev")
    a, b = s3creds.chain()(), s3creds.chain()()
    assert a.access_key_id != b.access_key_id
    assert portal.count("GET /federation/credentials") == 2
    portal.stop()


def test_a_credential_process_printing_without_end_is_killed(aws, monkeypatch):
    """`yes` prints forever: its output is read and dropped past 1 MiB (the memory stays
    bounded), and it is killed at the timeout."""
    write(aws, "[default]\ncredential_process = yes not-json\n")
    monkeypatch.setenv("DSBACKUP_S3_CREDENTIAL_PROCESS_TIMEOUT", "1")
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.monotonic()
    with pytest.raises(S3ApiError, match=r"gave no credentials within 1 s"):
        s3creds.chain()()
    assert time.monotonic() - t < 20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10  # KiB
