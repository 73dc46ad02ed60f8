"""The source of a profile's credentials (docs/STORAGE.md "Credentials from a profile"), its
settings read by :mod:`dsbackup.storage.s3files`.

The order for a profile, as botocore's chain after the environment's keys:

1. ``role_arn`` (without ``web_identity_token_file``): STS ``AssumeRole``
   (:mod:`dsbackup.storage.s3assume`) signed with the credentials of ``source_profile``
   (resolved in turn: its keys, or its own role, chains of any length, a loop refused) or
   of ``credential_source`` (``Environment``, ``Ec2InstanceMetadata``, ``EcsContainer``);
2. web identity (the environment's, else the profile's): :mod:`dsbackup.storage.s3sources`;
3. SSO (``sso_session`` or ``sso_start_url``): :mod:`dsbackup.storage.s3sso`;
4. the credentials file's keys;
5. ``credential_process``: :mod:`dsbackup.storage.s3process`;
6. the config file's keys;

then container credentials and instance metadata (:mod:`dsbackup.storage.s3creds` asks
:mod:`dsbackup.storage.s3sources`).
"""

from __future__ import annotations

from collections.abc import Callable

from dsbackup.errors import ConfigError
from dsbackup.storage.s3assume import AssumeRole, credential_source
from dsbackup.storage.s3config import register_secret
from dsbackup.storage.s3fetch import Credentials, _env
from dsbackup.storage.s3files import Profiles, has_keys, has_role, has_sso
from dsbackup.storage.s3process import CredentialProcess
from dsbackup.storage.s3sources import WebIdentity
from dsbackup.storage.s3sso import Sso

__all__ = ["source"]


def static_keys(values: dict[str, str], source: str) -> Callable[[], Credentials]:
    key_id, secret = values["aws_access_key_id"], values["aws_secret_access_key"]
    token = values.get("aws_session_token") or None
    for s in (secret, token, key_id):
        register_secret(s)
    creds = Credentials(key_id, secret, token)

    def keys() -> Credentials:
        return creds

    keys.name = source  # type: ignore[attr-defined]
    return keys


def source(profiles: Profiles, name: str, region: str, *, top: bool,
           visited: tuple[str, ...] = ()) -> Callable | None:
    """The source of the profile's credentials in the order above (None: the profile sets
    up none of them and, `top`, the chain goes on to container and instance credentials);
    ConfigError for settings that cannot work, named with the profile."""
    values = profiles.get(name)
    if values is None and top and name == "default":
        values = {}  # no files: the environment's web identity may still be there
    if values is None:
        raise ConfigError(f"AWS profile {name!r} is not in {profiles.conf_file} or "
                          f"{profiles.creds_file}")
    where = profiles.where(name)
    # a source profile with keys gives its keys, even with a role_arn (botocore's rule)
    if has_role(values) and (top or not has_keys(values)):
        return _role(profiles, name, values, region, visited + (name,))
    token_file = (_env("AWS_WEB_IDENTITY_TOKEN_FILE") if top else "") or values.get(
        "web_identity_token_file", "")
    if token_file:
        role_arn = (_env("AWS_ROLE_ARN") if top else "") or values.get("role_arn", "")
        if not role_arn and top and _env("AWS_WEB_IDENTITY_TOKEN_FILE"):
            raise ConfigError("web identity: AWS_WEB_IDENTITY_TOKEN_FILE is set but "
                              "AWS_ROLE_ARN is not")
        if not role_arn:
            raise ConfigError(f"web identity of {where}: web_identity_token_file is set but "
                              "role_arn is not")
        session = (_env("AWS_ROLE_SESSION_NAME") if top else "") or values.get(
            "role_session_name", "")
        return WebIdentity(token_file, role_arn, session, region)
    if has_sso(values):
        return Sso.from_profile(profiles, name, values)
    if has_keys(profiles.credentials.get(name, {})):
        return static_keys(profiles.credentials[name], f"the keys of profile {name} of "
                           f"{profiles.creds_file}")
    if values.get("credential_process"):
        return CredentialProcess(values["credential_process"], where)
    if has_keys(values):
        return static_keys(values, f"the keys of {where}")
    if top:
        return None
    raise ConfigError(f"source_profile {name!r} ({where}) gives no credentials: no keys, "
                      "role_arn, web identity, SSO or credential_process")


def _role(profiles: Profiles, name: str, values: dict[str, str], region: str,
          visited: tuple[str, ...]) -> AssumeRole:
    """The profile's role, assumed with the credentials of its source."""
    where = profiles.where(name)
    if values.get("mfa_serial"):
        raise ConfigError(f"{where}: the role needs an MFA code (mfa_serial), which a "
                          "backup cannot ask for; use a role or profile without MFA, or "
                          "credentials made beforehand (aws sts assume-role, "
                          "credential_process)")
    src_profile = values.get("source_profile", "")
    cred_source = values.get("credential_source", "")
    if src_profile and cred_source:
        raise ConfigError(f"{where}: both source_profile and credential_source are set; "
                          "set one")
    if not (src_profile or cred_source):
        raise ConfigError(f"{where}: role_arn needs source_profile or credential_source")
    src: Callable[[], Credentials] | None
    if src_profile:
        if src_profile in visited and (src_profile != name or not has_keys(values)):
            chain = " -> ".join(visited + (src_profile,))
            raise ConfigError(f"{where}: source_profile loops ({chain})")
        src = source(profiles, src_profile, region, top=False, visited=visited)
        assert src is not None  # (not top: a profile without credentials is an error)
        src_name = f"profile {src_profile}"
    else:
        src = credential_source(cred_source, where)
        src_name = f"credential_source {cred_source}"
    raw = values.get("duration_seconds", "").strip()
    duration = None
    if raw:
        try:
            duration = int(raw)
        except ValueError:
            duration = -1
        if not 900 <= duration <= 43200:
            raise ConfigError(f"{where}: duration_seconds {raw!r}: expected 900 to 43200")
    return AssumeRole(values["role_arn"], src, src_name, region,
                      session=values.get("role_session_name", ""),
                      external_id=values.get("external_id", ""), duration=duration,
                      where=where)
