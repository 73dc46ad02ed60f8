"""Plans shipped with dsbackup, usable by name: ``dsbackup migrate kubo-11-to-12 SRC DST`` or
``dsbackup migrate --kubo 11-to-12 REPO``. docs/MIGRATION.md shows each one."""

from __future__ import annotations

from dsbackup.errors import ConfigError
from dsbackup.migration.plan import MigrationPlan, _parse_text

__all__ = ["SHIPPED", "shipped_plan"]

KUBO_11_TO_12 = """\
id = "kubo-11-to-12"
version = 12
description = "Kubo repo 11 -> 12: blocks keyed by CIDv1 re-keyed to their multihash (fs-repo-11-to-12)"

[kubo]
from_version = 11
to_version = 12
revert_log = "11-to-12-cids.txt"

[[steps]]
id = "rekey"
type = "transform"
source = "target"
target = "target"
filters = { key_patterns = ["/blocks/*", "/filestore/*"] }
transform = { key_transform = "cid_to_multihash" }
"""

SHIPPED: dict[str, str] = {"kubo-11-to-12": KUBO_11_TO_12}


def shipped_plan(name: str) -> MigrationPlan:
    """The shipped plan called ``name`` (``ConfigError`` naming the known ones otherwise)."""
    text = SHIPPED.get(name)
    if text is None:
        raise ConfigError(f"no shipped plan {name!r} (shipped: {', '.join(sorted(SHIPPED))})")
    return MigrationPlan.from_dict(_parse_text(text, "toml", f"<shipped plan {name}>"),
                                   origin=f"<shipped plan {name}>")
