"""The plan model (``MigrationPlan`` of ``MigrationStep``s) and its loading from TOML/JSON/YAML.

A plan is checked completely before anything runs: unknown fields, unknown transforms or
validators, malformed prefixes or globs, duplicate step ids and impossible combinations are
reported together, each with its place in the file (``steps[2].transform.key_transform``).
See docs/MIGRATION.md for the file format.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from dsbackup.errors import ConfigError
from dsbackup.migration.config import MigrationConfig

__all__ = [
    "FilterConfig",
    "KuboSpec",
    "MigrationPlan",
    "MigrationStep",
    "MigrationType",
    "TransformationConfig",
    "load_plan",
]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SOURCE = "source"
TARGET = "target"


class MigrationType(str, Enum):
    COPY = "copy"
    MOVE = "move"
    TRANSFORM = "transform"
    VALIDATE = "validate"
    CLEANUP = "cleanup"


def _as_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: expected a string or a list of strings, got {value!r}")


@dataclass
class FilterConfig:
    """Which records a step touches. All given conditions must hold."""

    key_prefix: str | None = None
    key_patterns: list[str] = field(default_factory=list)
    exclude_patterns: list[str] = field(default_factory=list)
    min_value_size: int | None = None
    max_value_size: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> FilterConfig:
        d = dict(_require_table(d, where))
        if "key_pattern" in d:  # singular alias
            d["key_patterns"] = _as_list(d.pop("key_pattern"), f"{where}.key_pattern") + \
                _as_list(d.get("key_patterns"), f"{where}.key_patterns")
        _reject_unknown(d, {"key_prefix", "key_patterns", "exclude_patterns",
                            "min_value_size", "max_value_size"}, where)
        return cls(key_prefix=d.get("key_prefix"),
                   key_patterns=_as_list(d.get("key_patterns"), f"{where}.key_patterns"),
                   exclude_patterns=_as_list(d.get("exclude_patterns"),
                                             f"{where}.exclude_patterns"),
                   min_value_size=d.get("min_value_size"),
                   max_value_size=d.get("max_value_size"))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}

    @property
    def empty(self) -> bool:
        return not self.to_dict()

    def compile(self, where: str = "filters") -> Any:
        from dsbackup.migration.filters import compile_filter
        from dsbackup.migration.transforms import normalize_prefix

        for name in ("min_value_size", "max_value_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ConfigError(f"{where}.{name}: must be a byte count >= 0, got {v!r}")
        if (self.min_value_size is not None and self.max_value_size is not None
                and self.min_value_size > self.max_value_size):
            raise ConfigError(f"{where}: min_value_size exceeds max_value_size")
        prefix = (normalize_prefix(self.key_prefix, f"{where}.key_prefix")
                  if self.key_prefix is not None else None)
        return compile_filter(prefix, self.key_patterns, self.exclude_patterns,
                              self.min_value_size, self.max_value_size, where)


@dataclass
class TransformationConfig:
    """What a step does to records: key transforms, then ``mappings``; value transforms;
    validators checked on every record the step writes (or, in a validate step, reads)."""

    key_transform: str | list[str] | None = None
    value_transform: str | list[str] | None = None
    mappings: dict[str, str] = field(default_factory=dict)
    validators: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> TransformationConfig:
        d = _require_table(d, where)
        _reject_unknown(d, {"key_transform", "value_transform", "mappings", "validators"}, where)
        mappings = d.get("mappings") or {}
        if not isinstance(mappings, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in mappings.items()):
            raise ConfigError(f"{where}.mappings: expected a table of prefix = prefix strings")
        return cls(key_transform=_as_list(d.get("key_transform"), f"{where}.key_transform"),
                   value_transform=_as_list(d.get("value_transform"),
                                            f"{where}.value_transform"),
                   mappings=dict(mappings),
                   validators=_as_list(d.get("validators"), f"{where}.validators"))

    @property
    def key_specs(self) -> list[str]:
        return _as_list(self.key_transform, "key_transform")

    @property
    def value_specs(self) -> list[str]:
        return _as_list(self.value_transform, "value_transform")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.key_specs:
            out["key_transform"] = self.key_specs
        if self.value_specs:
            out["value_transform"] = self.value_specs
        if self.mappings:
            out["mappings"] = dict(self.mappings)
        if self.validators:
            out["validators"] = list(self.validators)
        return out

    def compile(self, where: str = "transform") -> Any:
        from dsbackup.migration.runtime import CompiledTransform

        return CompiledTransform.build(self, where)


@dataclass
class MigrationStep:
    """One step. ``source``/``target`` name the run's stores (``"source"``, ``"target"``) or
    give another datastore URI; the same store on both sides means "in place"."""

    id: str
    type: MigrationType | str
    description: str = ""
    source: str = SOURCE
    target: str = TARGET
    transform: TransformationConfig | None = None
    filters: FilterConfig | None = None
    compare: bool | None = None

    def __post_init__(self) -> None:
        if isinstance(self.type, str) and not isinstance(self.type, MigrationType):
            try:
                self.type = MigrationType(self.type)
            except ValueError:
                known = ", ".join(t.value for t in MigrationType)
                raise ConfigError(f"step {self.id!r}: unknown type {self.type!r} "
                                  f"(known: {known})") from None

    @property
    def kind(self) -> MigrationType:
        assert isinstance(self.type, MigrationType)
        return self.type

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> MigrationStep:
        d = _require_table(d, where)
        _reject_unknown(d, {"id", "type", "description", "source", "target", "transform",
                            "filters", "compare"}, where)
        for name in ("id", "type"):
            if name not in d:
                raise ConfigError(f"{where}: missing required field {name!r}")
        for name in ("id", "type", "description", "source", "target"):
            if name in d and not isinstance(d[name], str):
                raise ConfigError(f"{where}.{name}: expected a string, got {d[name]!r}")
        if "compare" in d and not isinstance(d["compare"], bool):
            raise ConfigError(f"{where}.compare: expected true or false")
        try:
            mtype = MigrationType(d["type"])
        except ValueError:
            known = ", ".join(t.value for t in MigrationType)
            raise ConfigError(f"{where}.type: unknown step type {d['type']!r} "
                              f"(known: {known})") from None
        return cls(id=d["id"], type=mtype, description=d.get("description", ""),
                   source=d.get("source", SOURCE), target=d.get("target", TARGET),
                   transform=(TransformationConfig.from_dict(d["transform"], f"{where}.transform")
                              if d.get("transform") is not None else None),
                   filters=(FilterConfig.from_dict(d["filters"], f"{where}.filters")
                            if d.get("filters") is not None else None),
                   compare=d.get("compare"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.kind.value}
        if self.description:
            out["description"] = self.description
        out["source"] = self.source
        out["target"] = self.target
        if self.transform is not None and self.transform.to_dict():
            out["transform"] = self.transform.to_dict()
        if self.filters is not None and not self.filters.empty:
            out["filters"] = self.filters.to_dict()
        if self.compare is not None:
            out["compare"] = self.compare
        return out

    def validate(self, where: str) -> None:
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise ConfigError(f"{where}.id: step ids are 1-128 characters of A-Z a-z 0-9 . _ - "
                              f"starting with a letter or digit, got {self.id!r}")
        for side in ("source", "target"):
            ref = getattr(self, side)
            if ref not in (SOURCE, TARGET) and ":" not in ref and not ref.startswith("/"):
                raise ConfigError(f"{where}.{side}: expected 'source', 'target' or a datastore "
                                  f"URI, got {ref!r}")
        t = self.transform or TransformationConfig()
        t.compile(f"{where}.transform")
        (self.filters or FilterConfig()).compile(f"{where}.filters")
        kind = self.kind
        if kind is MigrationType.MOVE and self.source == self.target:
            raise ConfigError(f"{where}: a move needs different source and target (use a "
                              f"transform step to re-key in place)")
        if kind is MigrationType.VALIDATE and self.compare is False and not t.validators:
            raise ConfigError(f"{where}: a validate step with compare = false needs validators")
        if kind is MigrationType.CLEANUP and (t.key_specs or t.value_specs or t.mappings):
            raise ConfigError(f"{where}: a cleanup step takes no transforms")
        if kind is MigrationType.TRANSFORM and not (t.key_specs or t.value_specs or t.mappings
                                                    or t.validators):
            raise ConfigError(f"{where}: a transform step needs a key or value transform")


_VERSION = re.compile(r"[0-9]{1,9}")
_LOG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_REPO_FILES = {"config", "datastore_spec", "version", "repo.lock", "api", "gateway"}


@dataclass
class KuboSpec:
    """The ``[kubo]`` table: the Kubo repo version a plan migrates from and to, and the
    revert log it writes into the repo (see docs/MIGRATION.md, "Kubo repositories")."""

    from_version: str
    to_version: str
    revert_log: str | None = None

    def __post_init__(self) -> None:
        for name in ("from_version", "to_version"):
            v = getattr(self, name)
            if isinstance(v, int) and not isinstance(v, bool):
                setattr(self, name, str(v))

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> KuboSpec:
        d = _require_table(d, where)
        _reject_unknown(d, {"from_version", "to_version", "revert_log"}, where)
        for name in ("from_version", "to_version"):
            if name not in d:
                raise ConfigError(f"{where}: missing required field {name!r}")
        spec = cls(from_version=d["from_version"], to_version=d["to_version"],
                   revert_log=d.get("revert_log"))
        spec.validate(where)
        return spec

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"from_version": self.from_version, "to_version": self.to_version}
        if self.revert_log:
            out["revert_log"] = self.revert_log
        return out

    def validate(self, where: str) -> None:
        for name in ("from_version", "to_version"):
            v = getattr(self, name)
            if not isinstance(v, str) or not _VERSION.fullmatch(v):
                raise ConfigError(f"{where}.{name}: a Kubo repo version is an integer, "
                                  f"got {v!r}")
        if self.from_version == self.to_version:
            raise ConfigError(f"{where}: from_version and to_version are the same")
        log = self.revert_log
        if log is not None and (not isinstance(log, str) or not _LOG_NAME.fullmatch(log)
                                or log in _REPO_FILES):
            raise ConfigError(f"{where}.revert_log: a plain file name in the repo directory "
                              f"(not one of Kubo's own files), got {log!r}")


@dataclass
class MigrationPlan:
    """An identified, versioned list of steps, with the steps that undo it.

    ``config`` holds :class:`MigrationConfig` fields that this plan sets for its runs.
    """

    id: str
    version: str
    steps: list[MigrationStep]
    description: str = ""
    rollback: list[MigrationStep] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    origin: str = field(default="<plan>", compare=False)
    kubo: KuboSpec | None = None

    def __post_init__(self) -> None:
        if isinstance(self.version, int) and not isinstance(self.version, bool):
            self.version = str(self.version)

    @property
    def rollback_steps(self) -> list[MigrationStep]:
        return self.rollback

    @classmethod
    def from_dict(cls, d: dict[str, Any], origin: str = "<plan>") -> MigrationPlan:
        d = dict(_require_table(d, origin))
        if "rollback_steps" in d:
            d.setdefault("rollback", d.pop("rollback_steps"))
        _reject_unknown(d, {"id", "version", "description", "steps", "rollback", "config",
                            "kubo"}, origin)
        for name in ("id", "version", "steps"):
            if name not in d:
                raise ConfigError(f"{origin}: missing required field {name!r}")
        version = d["version"]
        if isinstance(version, bool) or not isinstance(version, (str, int)):
            raise ConfigError(f"{origin}: version must be a string or an integer")
        steps = _steps(d["steps"], f"{origin}: steps")
        rollback = _steps(d.get("rollback") or [], f"{origin}: rollback")
        config = d.get("config") or {}
        if not isinstance(config, dict):
            raise ConfigError(f"{origin}: config must be a table")
        if not isinstance(d["id"], str) or not isinstance(d.get("description", ""), str):
            raise ConfigError(f"{origin}: id and description must be strings")
        kubo = (KuboSpec.from_dict(d["kubo"], f"{origin}: kubo")
                if d.get("kubo") is not None else None)
        plan = cls(id=d["id"], version=str(version), description=d.get("description", ""),
                   steps=steps, rollback=rollback, config=dict(config), origin=origin,
                   kubo=kubo)
        plan.validate()
        return plan

    @classmethod
    def from_file(cls, path: str | Path) -> MigrationPlan:
        return load_plan(path)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "version": self.version}
        if self.description:
            out["description"] = self.description
        out["steps"] = [s.to_dict() for s in self.steps]
        if self.rollback:
            out["rollback"] = [s.to_dict() for s in self.rollback]
        if self.config:
            out["config"] = dict(self.config)
        if self.kubo is not None:
            out["kubo"] = self.kubo.to_dict()
        return out

    def digest(self) -> str:
        """SHA-256 of the plan's canonical JSON: what it does, not how it was written nor
        the ``config`` it runs with."""
        doc = self.to_dict()
        doc.pop("description", None)
        doc.pop("config", None)  # how it runs (batch size, ...) does not change the result
        for s in doc["steps"] + doc.get("rollback", []):
            s.pop("description", None)
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first problem; nothing has run yet."""
        o = self.origin
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise ConfigError(f"{o}: id: plan ids are 1-128 characters of A-Z a-z 0-9 . _ - "
                              f"starting with a letter or digit, got {self.id!r}")
        if not isinstance(self.version, str) or not self.version or "\n" in self.version:
            raise ConfigError(f"{o}: version must be a non-empty single-line string")
        if not self.steps:
            raise ConfigError(f"{o}: steps: a plan needs at least one step")
        if self.kubo is not None:
            if not isinstance(self.kubo, KuboSpec):
                raise ConfigError(f"{o}: kubo: not a KuboSpec")
            self.kubo.validate(f"{o}: kubo")
        for group, steps in (("steps", self.steps), ("rollback", self.rollback)):
            seen: set[str] = set()
            for i, step in enumerate(steps):
                if not isinstance(step, MigrationStep):
                    raise ConfigError(f"{o}: {group}[{i}]: not a MigrationStep")
                step.validate(f"{o}: {group}[{i}]")
                if step.id in seen:
                    raise ConfigError(f"{o}: {group}[{i}].id: duplicate step id {step.id!r}")
                seen.add(step.id)
        unknown = set(self.config) - MigrationConfig.field_names()
        if unknown:
            raise ConfigError(f"{o}: config: unknown setting(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(MigrationConfig.field_names()))})")
        try:
            MigrationConfig().with_overrides(self.config)  # type-checks the values
        except ConfigError as exc:
            raise ConfigError(f"{o}: config: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"{o}: config: {exc}") from None


def _steps(value: Any, where: str) -> list[MigrationStep]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of step tables")
    return [MigrationStep.from_dict(s, f"{where}[{i}]") for i, s in enumerate(value)]


def _require_table(d: Any, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a table/mapping, got {type(d).__name__}")
    return d


def _reject_unknown(d: dict[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(d) - known)
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(map(repr, extra))} "
                          f"(known: {', '.join(sorted(known))})")


def _parse_text(text: str, fmt: str, origin: str) -> Any:
    if fmt == "toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{origin}: invalid TOML: {exc}") from None
    if fmt == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{origin}: invalid JSON: {exc}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: invalid YAML: {exc}") from None


def load_plan(path: str | Path) -> MigrationPlan:
    """Load and validate a plan file; the format comes from the suffix (``.toml``,
    ``.json``, ``.yaml``/``.yml``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read plan {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"plan {p} is not UTF-8 text") from None
    suffix = p.suffix.lower()
    fmt = {".toml": "toml", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(suffix)
    if fmt is None:
        raise ConfigError(f"plan {p}: unknown format {suffix or '(no suffix)'!r}; "
                          f"use .toml, .json, .yaml or .yml")
    return MigrationPlan.from_dict(_parse_text(text, fmt, str(p)), origin=str(p))
