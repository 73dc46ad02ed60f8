"""Key and value transforms."""

from __future__ import annotations

import base64
import gzip
import hashlib
import zlib

import pytest

from dsbackup.errors import ConfigError, MigrationError
from dsbackup.migration import transforms as T
from dsbackup.migration.transforms import (
    cid_key_to_multihash_key,
    compile_key_transform,
    compile_value_transform,
    register_key_transform,
    register_value_transform,
)


def b32(data: bytes) -> bytes:
    return base64.b32encode(data).rstrip(b"=")


def test_add_and_remove_prefix() -> None:
    add = compile_key_transform(["add_prefix:/p/q"], None)
    assert add(b"/a/b") == b"/p/q/a/b"
    rem = compile_key_transform(["remove_prefix:/p"], None)
    assert rem(b"/p/a") == b"/a"
    assert rem(b"/p") == b"/"
    assert rem(b"/pa/x") == b"/pa/x"  # not in the namespace
    assert rem(b"/x/p/a") == b"/x/p/a"
    chain = compile_key_transform(["add_prefix:/v1", "remove_prefix:/v1"], None)
    assert chain.apply_batch([b"/a", b"/b/c"]) == [b"/a", b"/b/c"]
    assert compile_key_transform([], None).identity


def test_mappings_use_namespace_semantics_and_longest_prefix() -> None:
    kt = compile_key_transform([], {"/a": "/b", "/a/deep": "/d", "/": "/root"})
    assert kt(b"/a") == b"/b"
    assert kt(b"/a/x") == b"/b/x"
    assert kt(b"/a/deep/y") == b"/d/y"
    assert kt(b"/ab") == b"/root/ab"  # /a does not match /ab; / catches it
    to_root = compile_key_transform([], {"/blocks": "/"})
    assert to_root(b"/blocks/CIQA") == b"/CIQA"
    assert to_root(b"/other") == b"/other"


@pytest.mark.parametrize("spec", ["add_prefix", "add_prefix:p", "remove_prefix", "nope",
                                  "cid_to_multihash:blocks"])
def test_bad_key_specs_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError):
        compile_key_transform([spec], None, "steps[0].transform")


def test_cid_to_multihash_single_keys() -> None:
    digest = hashlib.sha256(b"x").digest()
    mh = b"\x12\x20" + digest
    v1_raw = b"/" + b32(b"\x01\x55" + mh)
    v1_pb = b"/blocks/" + b32(b"\x01\x70" + mh)
    v0 = b"/" + b32(mh)
    assert cid_key_to_multihash_key(v1_raw) == b"/" + b32(mh)
    assert cid_key_to_multihash_key(v1_pb) == b"/blocks/" + b32(mh)
    assert cid_key_to_multihash_key(v0) == v0          # CIDv0: already a multihash
    for other in (b"/local/filesroot", b"/pins/x", b"/", b"/CIQ", b"/" + b32(b"\x01\x55")):
        assert cid_key_to_multihash_key(other) == other  # not a CID: left alone
    scoped = compile_key_transform(["cid_to_multihash:/blocks"], None)
    assert scoped(v1_pb) == b"/blocks/" + b32(mh)
    assert scoped(b"/other" + v1_raw) == b"/other" + v1_raw


def test_gzip_is_deterministic_and_round_trips() -> None:
    gz = compile_value_transform(["gzip:9"])
    data = b"hello " * 1000
    a, b = gz(data), gz(data)
    assert a == b and len(a) < len(data)
    assert gzip.decompress(a) == data
    assert compile_value_transform(["gunzip"])(a) == data
    assert compile_value_transform(["compress", "decompress"])(data) == data
    # multi-member gzip is one value
    assert compile_value_transform(["gunzip"])(gzip.compress(b"a") + gzip.compress(b"b")) \
        == b"ab"


def test_gunzip_rejects_garbage_truncation_and_bombs(monkeypatch: pytest.MonkeyPatch) -> None:
    gun = compile_value_transform(["gunzip"])
    with pytest.raises(MigrationError, match="not gzip"):
        gun(b"plain")
    with pytest.raises(MigrationError, match="truncated"):
        gun(gzip.compress(b"x" * 1000)[:-12])
    monkeypatch.setattr(T, "MAX_INFLATED", 1000)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = c.compress(b"\0" * 100_000) + c.flush()
    with pytest.raises(MigrationError, match="beyond"):
        gun(bomb)


def test_custom_transforms_by_name() -> None:
    register_key_transform("upper_test", lambda k: k.upper())
    register_value_transform("rev_test", lambda v: v[::-1])
    assert compile_key_transform(["upper_test"], None)(b"/a/b") == b"/A/B"
    assert compile_value_transform(["rev_test"])(b"abc") == b"cba"
    register_key_transform("broken_test", lambda k: "no-slash")
    with pytest.raises(MigrationError, match="broken_test"):
        compile_key_transform(["broken_test"], None)(b"/a")
    with pytest.raises(ConfigError):
        register_key_transform("add_prefix", lambda k: k)
    with pytest.raises(ConfigError, match="unknown value transform"):
        compile_value_transform(["zstd"])
