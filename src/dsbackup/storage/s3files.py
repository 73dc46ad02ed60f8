"""The AWS shared files, parsed as botocore parses them (docs/STORAGE.md "Credentials from
a profile"): ``~/.aws/config`` (``AWS_CONFIG_FILE``), whose profiles are the sections
``[default]`` and ``[profile NAME]`` (a bare ``[NAME]`` there is not a profile) and whose
``[sso-session NAME]`` sections hold SSO settings; and ``~/.aws/credentials``
(``AWS_SHARED_CREDENTIALS_FILE``), whose sections ``[NAME]`` are profiles. A profile's
settings are the config file's, overridden one by one by the credentials file's."""

from __future__ import annotations

import configparser
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from dsbackup.errors import ConfigError

SSO_KEYS = ("sso_session", "sso_start_url", "sso_region", "sso_account_id", "sso_role_name")


def _read_ini(path: Path) -> configparser.ConfigParser:
    p = configparser.ConfigParser(interpolation=None)
    try:
        p.read(path)
    except configparser.Error as exc:
        raise ConfigError(f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError:  # a binary file named by AWS_CONFIG_FILE: not an INI file
        raise ConfigError(f"{path}: cannot parse: not a text file") from None
    return p


@dataclass(frozen=True)
class Profiles:
    """The profiles of the two files, and the ``sso-session`` sections of the config file."""

    config: dict[str, dict[str, str]]
    credentials: dict[str, dict[str, str]]
    sessions: dict[str, dict[str, str]]
    conf_file: Path
    creds_file: Path

    def get(self, name: str) -> dict[str, str] | None:
        """The profile's settings (config's, then credentials' over them); None: no such."""
        if name not in self.config and name not in self.credentials:
            return None
        return {**self.config.get(name, {}), **self.credentials.get(name, {})}

    def where(self, name: str) -> str:
        return f"profile {name} of {self.conf_file}"


def _sections(parser: configparser.ConfigParser) -> dict[str, dict[str, str]]:
    return {s: dict(parser.items(s)) for s in parser.sections()}


def _split(section: str) -> list[str]:
    try:
        return shlex.split(section)
    except ValueError:
        return []


def load() -> Profiles:
    """The shared files, parsed (ConfigError, exit 2, for one that cannot be)."""
    env = os.environ
    conf_file = Path(env.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config")
    creds_file = Path(env.get("AWS_SHARED_CREDENTIALS_FILE")
                      or Path.home() / ".aws" / "credentials")
    config: dict[str, dict[str, str]] = {}
    sessions: dict[str, dict[str, str]] = {}
    if conf_file.is_file():
        for section, values in _sections(_read_ini(conf_file)).items():
            parts = _split(section)
            if section == "default":
                config.setdefault("default", {}).update(values)
            elif len(parts) == 2 and parts[0] == "profile":
                config.setdefault(parts[1], {}).update(values)
            elif len(parts) == 2 and parts[0] == "sso-session":
                sessions[parts[1]] = values
    credentials = _sections(_read_ini(creds_file)) if creds_file.is_file() else {}
    return Profiles(config, credentials, sessions, conf_file, creds_file)


def has_keys(values: dict[str, str]) -> bool:
    return bool(values.get("aws_access_key_id") and values.get("aws_secret_access_key"))


def has_role(values: dict[str, str]) -> bool:
    return bool(values.get("role_arn")) and not values.get("web_identity_token_file")


def has_sso(values: dict[str, str]) -> bool:
    return any(values.get(k) for k in SSO_KEYS)


def keys_first(profiles: Profiles, name: str) -> bool:
    """Whether the profile's own keys are its credentials: nothing before them in the order
    above (a role, web identity, SSO) is set up, and they are in the credentials file or
    no ``credential_process`` comes before the config file's."""
    values = profiles.get(name)
    if values is None or not has_keys(values):
        return False
    if has_role(values) or has_sso(values) or values.get("web_identity_token_file") or (
            os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE", "").strip()):
        return False
    return has_keys(profiles.credentials.get(name, {})) or not values.get("credential_process")
