"""``cid_to_multihash`` gives the keys Kubo's 11-to-12 migration gives.

What that migration does (ipfs/fs-repo-migrations, fs-repo-11-to-12): for every key under
``/blocks`` (and ``/filestore``) whose last namespace is base32 (RFC 4648, upper case, no
padding) of a CID, a CIDv1 is re-keyed to base32 of its multihash; CIDv0 keys (which already
are multihashes) and keys that are no CID are left alone. The expected keys here are computed
with hashlib and the base64 module only, never with the code under test.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import cid as cidlib  # py-cid: the test oracle (a declared test dependency)
import pytest

from dsbackup import (
    FilterConfig,
    MigrationConfig,
    MigrationManager,
    MigrationPlan,
    MigrationStep,
    TransformationConfig,
)
from dsbackup.migration.transforms import cid_key_to_multihash_key

from .helpers import b32, block_items, fill, records

# Block names in fs-repo-migrations' 11-to-12 test repository (written by go-ipfs 0.8).
REPOTEST_NAMES = [
    "CIQPLM724LKOUZT2XDOCEATJUKN22OH2IW57Z4PNWCH6CIR5A5SC3QQ",
    "AFYBEIDPDAZYJL3TQBUO5LN4PZVQAFVWNVN2QWVGENVALIPY442OTC4IPQ",
    "AFYBEIDBL36UXJ43K6XYD2FSRCBFHSTGVZQ7CFLGGXLEXE5GKOKTHUFJ2A",
    "AFYBEIE4PDUK2UWVR5DQ36WNBHXSPGOX7DTQO3FPRRI4R2WPA7VREJ5JQQ",
    "CIQMVGNPRQAVOT3H5AJKZX4EZDO7DUGASUKHQIF776H3TBZ4JOPIL2I",
    "CIQEMBRMF6CFT2GWUDLKSCZ6HUI6RXMZ3QQWLJIJP4WXDPRTDUYWOCA",
    "AFYBEIFWYDGV5ER4HW2UQGGFBZDIOZFMUF6N7YLMTCG7IVXCRRTYN5XV5U",
]


def expected_key(name: str) -> str:
    raw = base64.b32decode(name + "=" * (-len(name) % 8))
    if raw[:2] == b"\x12\x20" and len(raw) == 34:
        return name                                  # CIDv0: unchanged
    assert raw[0] == 1 and raw[1] == 0x70            # CIDv1 dag-pb in this repo
    return base64.b32encode(raw[2:]).decode().rstrip("=")


def test_real_repotest_names() -> None:
    for name in REPOTEST_NAMES:
        new = cid_key_to_multihash_key(b"/blocks/" + name.encode()).decode()
        assert new == "/blocks/" + expected_key(name)
        assert new.startswith("/blocks/CIQ")


def test_flatfs_blocks_in_place(tmp_path: Path) -> None:
    before, after = block_items(400)
    before[b"/" + b32(b"not a cid at all")] = b"left alone"
    after[b"/" + b32(b"not a cid at all")] = b"left alone"
    uri = f"flatfs:{tmp_path}/blocks?shard=next-to-last/2&sync=false"
    fill(uri, before)
    plan = MigrationPlan(id="11-to-12", version="12", steps=[
        MigrationStep(id="rekey", type="transform", source="target", target="target",
                      transform=TransformationConfig(key_transform="cid_to_multihash")),
        MigrationStep(id="check", type="validate", source="target",
                      filters=FilterConfig(key_patterns=["/CIQ*"]),
                      transform=TransformationConfig(validators=["cid_validator"]))])
    res = MigrationManager(MigrationConfig(batch_size=64)).execute_migration(plan, uri, uri)
    assert res.success, res.error_log
    assert records(uri) == after
    assert res.steps[0].changed == res.steps[0].deleted == 200
    assert res.steps[1].records == 400 and res.steps[1].errors == 0
    for key in after:  # the go-ds-flatfs layout: <next-to-last 2 chars>/<NAME>.data
        name = key.decode()[1:]
        assert (tmp_path / "blocks" / name[-3:-1] / f"{name}.data").is_file()
    assert not [p for p in (tmp_path / "blocks").rglob("*.data") if "_DSMIGRATE_" in p.name]


def test_flatfs_copy_into_new_store(tmp_path: Path) -> None:
    before, after = block_items(100, seed=3)
    src = f"flatfs:{tmp_path}/old?shard=next-to-last/2&sync=false"
    dst = f"flatfs:{tmp_path}/new?shard=next-to-last/2&sync=false"
    fill(src, before)
    plan = MigrationPlan(id="to-mh", version="1", steps=[MigrationStep(
        id="copy", type="copy", transform=TransformationConfig(
            key_transform="cid_to_multihash",
            validators=["cid_validator", "flatfs_key_validator"]))])
    res = MigrationManager().execute_migration(plan, src, dst)
    assert res.success, res.error_log
    assert records(dst) == after and records(src) == before


def test_kubo_repo_blocks_mount(tmp_path: Path, go_fixtures: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(go_fixtures / "kubo-v16-repo", repo)
    from dsbackup.datastores import open_datastore

    kubo = f"kubo:{repo}"
    before, after = block_items(60, seed=5)
    ds = open_datastore(kubo)
    try:
        keys = sorted(before)
        ds.put_many([b"/blocks" + k for k in keys], [before[k] for k in keys])
        ds.sync("/")
    finally:
        ds.close()
    meta_before = {k: v for k, v in records(kubo).items() if not k.startswith(b"/blocks/")}
    orig_blocks = {k: v for k, v in records(kubo).items()
                   if k.startswith(b"/blocks/") and k[7:] not in before}
    plan = MigrationPlan(id="kubo-11-to-12", version="12", steps=[
        MigrationStep(id="rekey", type="transform", source="target", target="target",
                      filters=FilterConfig(key_prefix="/blocks"),
                      transform=TransformationConfig(key_transform="cid_to_multihash")),
        MigrationStep(id="check", type="validate", source="target",
                      filters=FilterConfig(key_prefix="/blocks"),
                      transform=TransformationConfig(validators=["cid_validator"]))])
    res = MigrationManager(MigrationConfig(state_dir=tmp_path / "state")).execute_migration(
        plan, kubo, kubo)
    assert res.success, res.error_log
    got = records(kubo)
    assert {k: v for k, v in got.items() if not k.startswith(b"/blocks/")} == meta_before
    want = {b"/blocks" + k: v for k, v in after.items()} | orig_blocks
    assert {k: v for k, v in got.items() if k.startswith(b"/blocks/")} == want


@pytest.mark.parametrize("name", REPOTEST_NAMES)
def test_py_cid_oracle_agrees(name: str) -> None:
    raw = base64.b32decode(name + "=" * (-len(name) % 8))
    oracle = (cidlib.make_cid(0, "dag-pb", raw) if raw[:2] == b"\x12\x20"
              else cidlib.from_bytes(raw))
    mh = bytes(oracle.multihash)
    assert cid_key_to_multihash_key(b"/" + name.encode()) == b"/" + b32(mh)
