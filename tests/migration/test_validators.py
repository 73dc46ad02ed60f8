"""Record validators."""

from __future__ import annotations

import base64
import hashlib

import pytest

from dsbackup.errors import ConfigError
from dsbackup.migration.validators import compile_validators, register_validator


def b32(data: bytes) -> bytes:
    return base64.b32encode(data).rstrip(b"=")


def run(spec: str, key: bytes, value: bytes) -> str | None:
    (v,) = compile_validators([spec])
    return v(key, value)


def test_cid_validator_accepts_matching_blocks_in_every_key_form() -> None:
    block = b"a block of data"
    mh = b"\x12\x20" + hashlib.sha256(block).digest()
    assert run("cid_validator", b"/" + b32(mh), block) is None                # multihash/CIDv0
    assert run("cid_validator", b"/blocks/" + b32(b"\x01\x55" + mh), block) is None  # CIDv1
    mh512 = b"\x13\x40" + hashlib.sha512(block).digest()
    assert run("cid_validator", b"/" + b32(mh512), block) is None
    b2 = b"\xa0\xe4\x02\x20" + hashlib.blake2b(block, digest_size=32).digest()
    assert run("cid_validator", b"/" + b32(b"\x01\x71" + b2), block) is None


def test_cid_validator_rejects() -> None:
    block = b"a block of data"
    mh = b"\x12\x20" + hashlib.sha256(block).digest()
    assert "does not hash" in run("cid_validator", b"/" + b32(mh), block + b"!")
    assert "multihash or CID" in run("cid_validator", b"/local/filesroot", block)
    keccak = b"\x1b\x20" + b"\0" * 32
    assert "unsupported" in run("cid_validator", b"/" + b32(keccak), block)


def test_size_and_flatfs_validators() -> None:
    assert run("size_validator:4", b"/a", b"1234") is None
    assert "exceeds" in run("size_validator:4", b"/a", b"12345")
    assert run("size_validator", b"/a", b"x" * (2 << 20)) is None
    assert run("size_validator", b"/a", b"x" * ((2 << 20) + 1))
    assert run("flatfs_key_validator", b"/CIQABC_-+=9", b"") is None
    for bad in (b"/blocks/CIQA", b"/ciqa", b"/", b"CIQA", b"/CI.Q"):
        assert run("flatfs_key_validator", bad, b"") is not None


def test_validator_config_errors_and_custom() -> None:
    for spec in ("size_validator:big", "cid_validator:x", "nope"):
        with pytest.raises(ConfigError):
            compile_validators([spec], "steps[1].transform")
    register_validator("even_test", lambda k, v: None if len(v) % 2 == 0 else "odd length")
    assert run("even_test", b"/a", b"ab") is None
    assert run("even_test", b"/a", b"abc") == "odd length"
