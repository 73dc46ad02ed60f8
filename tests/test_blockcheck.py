"""`verify --check-blocks`: blocks re-hashed, and the block keys it cannot check, by reason."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from dsbackup.blockcheck import (
    REASON_CIDV1,
    REASON_NOT_MH,
    REASON_OTHER_HASH,
    unchecked_reason,
)
from dsbackup.datastores import open_datastore


def b32(data: bytes) -> bytes:
    return base64.b32encode(data).rstrip(b"=")


def mh(data: bytes) -> bytes:
    return b"\x12\x20" + hashlib.sha256(data).digest()


def test_unchecked_reason() -> None:
    v0 = b32(mh(b"x"))
    v1 = b32(b"\x01\x55" + mh(b"x"))
    blake = b32(b"\xa0\xe4\x02\x20" + hashlib.blake2b(b"x", digest_size=32).digest())
    assert unchecked_reason(b"/blocks/" + v0) is None
    assert unchecked_reason(b"/blocks/" + v1) == REASON_CIDV1
    assert unchecked_reason(b"/" + v1) == REASON_CIDV1          # a bare blockstore
    assert unchecked_reason(b"/blocks/" + blake) == REASON_OTHER_HASH
    assert unchecked_reason(b"/blocks/not-base32") == REASON_NOT_MH
    assert unchecked_reason(b"/local/filesroot") is None        # no block key
    assert unchecked_reason(b"/pins/" + v1) is None
    assert unchecked_reason(b"/peers") is None


def test_verify_reports_unchecked_block_keys(tmp_path: Path, run_cli) -> None:
    uri = f"flatfs:{tmp_path}/blocks?shard=next-to-last/2"
    ds = open_datastore(uri)
    keys, values = [], []
    for i in range(30):
        data = f"block {i}".encode()
        keys.append(b"/" + (b32(mh(data)) if i % 5 else b32(b"\x01\x70" + mh(data))))
        values.append(data)
    order = sorted(range(30), key=keys.__getitem__)
    ds.put_many([keys[i] for i in order], [values[i] for i in order])
    ds.close()
    archive = tmp_path / "b.dsb"
    assert run_cli("backup", uri, archive).returncode == 0
    res = run_cli("verify", archive, "--check-blocks", "--json")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["blocks_checked"] == 24
    assert rep["blocks_unchecked"] == {REASON_CIDV1: 6}
    assert rep["blocks_unchecked_examples"][REASON_CIDV1].startswith("/AFYBEI")
    human = run_cli("verify", archive, "--check-blocks")
    assert "24 blocks re-hashed" in human.stderr
    assert f"6 not checked: {REASON_CIDV1}" in human.stderr
