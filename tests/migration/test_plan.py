"""Plan model and loading from TOML, JSON and YAML, with validation before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from dsbackup.errors import ConfigError
from dsbackup.migration import (
    MigrationPlan,
    MigrationStep,
    MigrationType,
    TransformationConfig,
    load_plan,
)

TOML = """
id = "kubo-11-to-12"
version = 12
description = "CIDv1 block keys become multihash keys"

[config]
batch_size = 500

[[steps]]
id = "rekey"
type = "transform"
source = "target"
target = "target"
[steps.filters]
key_prefix = "/blocks"
[steps.transform]
key_transform = "cid_to_multihash"
validators = ["cid_validator", "size_validator:1048576"]

[[steps]]
id = "check"
type = "validate"
source = "target"
compare = false
[steps.transform]
validators = ["cid_validator"]

[[rollback]]
id = "undo"
type = "cleanup"
"""


def doc() -> dict:
        return tomllib.loads(TOML)


def test_same_plan_from_toml_json_yaml(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(TOML)
    (tmp_path / "p.json").write_text(json.dumps(doc()))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc()))
    (tmp_path / "p.yml").write_text(yaml.safe_dump(doc()))
    plans = [load_plan(tmp_path / n) for n in ("p.toml", "p.json", "p.yaml", "p.yml")]
    assert len({p.digest() for p in plans}) == 1
    p = plans[0]
    assert (p.id, p.version, p.config) == ("kubo-11-to-12", "12", {"batch_size": 500})
    assert [s.kind for s in p.steps] == [MigrationType.TRANSFORM, MigrationType.VALIDATE]
    assert p.steps[0].transform.key_specs == ["cid_to_multihash"]
    assert p.steps[0].filters.key_prefix == "/blocks"
    assert p.rollback_steps[0].id == "undo"
    assert MigrationPlan.from_dict(p.to_dict()).digest() == p.digest()


def test_digest_ignores_description_and_run_config() -> None:
    a = MigrationPlan.from_dict(doc())
    d = doc()
    d["description"] = "other words"
    d["config"] = {"batch_size": 7}
    assert MigrationPlan.from_dict(d).digest() == a.digest()
    d["steps"][0]["transform"]["key_transform"] = "add_prefix:/x"
    assert MigrationPlan.from_dict(d).digest() != a.digest()


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.pop("id"), "missing required field 'id'"),
    (lambda d: d.update(steps=[]), "at least one step"),
    (lambda d: d.update(extra=1), "unknown field"),
    (lambda d: d["steps"][0].update(type="frobnicate"), "steps[0].type: unknown step type"),
    (lambda d: d["steps"][0].update(colour="red"), "steps[0]: unknown field(s) 'colour'"),
    (lambda d: d["steps"][0]["transform"].update(key_transform="nope"),
     "steps[0].transform.key_transform[0]: unknown key transform 'nope'"),
    (lambda d: d["steps"][0]["transform"].update(validators=["size_validator:x"]),
     "steps[0].transform.validators[0]: size_validator takes a byte count"),
    (lambda d: d["steps"][0]["filters"].update(key_prefix="blocks"), "key_prefix"),
    (lambda d: d["steps"][1].update(id="rekey"), "duplicate step id"),
    (lambda d: d["steps"][1].update(id="bad id!"), "steps[1].id"),
    (lambda d: d["steps"][0].update(type="move"), "a move needs different source and target"),
    (lambda d: d["config"].update(batch_size=0), "batch_size"),
    (lambda d: d["config"].update(colour=1), "unknown setting"),
    # wrong types in [config]: before, an internal error (TypeError) once the run began
    (lambda d: d["config"].update(state_dir=5), "config: state_dir must be a path"),
    (lambda d: d["config"].update(backup_dir=True), "config: backup_dir must be a path"),
    (lambda d: d["config"].update(checkpoint_interval="1"), "config: checkpoint_interval"),
    (lambda d: d["config"].update(sample_size="3"), "config: sample_size"),
    (lambda d: d["config"].update(batch_size=True), "config: batch_size"),
    (lambda d: d["config"].update(timeout=True), "config: timeout"),
    (lambda d: d["steps"][1]["transform"].update(validators=[]), "needs validators"),
    (lambda d: d["steps"][0].update(source="nowhere"), "steps[0].source"),
])
def test_validation_errors_name_the_place(mutate, message: str) -> None:
    d = doc()
    mutate(d)
    with pytest.raises(ConfigError) as exc:
        MigrationPlan.from_dict(d, origin="plan.toml")
    assert message in str(exc.value)
    assert str(exc.value).startswith("plan.toml")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read plan"):
        load_plan(tmp_path / "missing.toml")
    (tmp_path / "p.ini").write_text("x")
    with pytest.raises(ConfigError, match="unknown format"):
        load_plan(tmp_path / "p.ini")
    (tmp_path / "p.toml").write_text("id = ")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_plan(tmp_path / "p.toml")
    (tmp_path / "p.json").write_text("{")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_plan(tmp_path / "p.json")
    (tmp_path / "p.yaml").write_text("- [")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_plan(tmp_path / "p.yaml")
    (tmp_path / "q.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a table"):
        load_plan(tmp_path / "q.yaml")


def test_python_construction_and_validation() -> None:
    plan = MigrationPlan(id="p", version=3, steps=[
        MigrationStep(id="c", type="copy",
                      transform=TransformationConfig(key_transform="add_prefix:/x"))])
    plan.validate()
    assert plan.version == "3"
    with pytest.raises(ConfigError, match="unknown type"):
        MigrationStep(id="c", type="teleport")
    bad = MigrationPlan(id="p", version="1", steps=[
        MigrationStep(id="c", type="transform", source="target")])
    with pytest.raises(ConfigError, match="needs a key or value transform"):
        bad.validate()
