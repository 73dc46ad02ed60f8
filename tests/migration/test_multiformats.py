"""Our own varint/base32/base58btc/multihash/CID code, checked against independent sources:
Python's base64 module, hand-built byte strings, and py-cid as an oracle when installed."""

from __future__ import annotations

import base64
import hashlib

import cid as cidlib  # py-cid: the test oracle (a declared test dependency)
import multihash as mhlib
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dsbackup.multiformats import (
    CID,
    MultiformatError,
    Multihash,
    b32_decode,
    b32_encode,
    b58_decode,
    b58_encode,
    decode_cid,
    decode_multihash,
    parse_cid,
    read_varint,
    write_varint,
)

# The CID of the empty directory, everywhere in IPFS docs.
EMPTY_DIR_V0 = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"


@given(st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_varint_round_trip(n: int) -> None:
    data = write_varint(n)
    assert read_varint(data + b"\xff") == (n, len(data))


@pytest.mark.parametrize("n,encoded", [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"),
                                       (128, b"\x80\x01"), (300, b"\xac\x02"),
                                       (0x70, b"\x70"), (0xB220, b"\xa0\xe4\x02")])
def test_varint_known_encodings(n: int, encoded: bytes) -> None:
    assert write_varint(n) == encoded
    assert read_varint(encoded) == (n, len(encoded))


@pytest.mark.parametrize("bad", [b"", b"\x80", b"\x81\x00", b"\xff" * 9 + b"\x01"])
def test_varint_rejects_truncated_overlong_and_non_minimal(bad: bytes) -> None:
    with pytest.raises(MultiformatError):
        read_varint(bad)


@given(st.binary(max_size=80))
def test_base32_matches_rfc4648_without_padding(data: bytes) -> None:
    expected = base64.b32encode(data).decode().rstrip("=")
    assert b32_encode(data) == expected
    assert b32_encode(data, upper=False) == expected.lower()
    assert b32_decode(expected) == data
    assert b32_decode(expected.lower(), upper=False) == data


@pytest.mark.parametrize("text", ["A", "ABC", "ABCDEF", "ciqa", "AB=C", "AB!D", "é"])
def test_base32_rejects_what_go_rejects(text: str) -> None:
    with pytest.raises(MultiformatError):
        b32_decode(text)


@given(st.binary(max_size=64))
def test_base58_round_trip(data: bytes) -> None:
    assert b58_decode(b58_encode(data)) == data


def test_base58_known_vectors() -> None:
    assert b58_encode(b"") == ""
    assert b58_encode(b"\0\0\x01") == "112"
    assert b58_encode(b"hello world") == "StV1DL6CwTryKyV"
    with pytest.raises(MultiformatError):
        b58_decode("0OIl")


def test_multihash_and_cid_v0_from_bytes() -> None:
    digest = hashlib.sha256(b"block").digest()
    mh = b"\x12\x20" + digest
    assert decode_multihash(mh) == Multihash(0x12, digest)
    cid = decode_cid(mh)
    assert (cid.version, cid.codec, cid.multihash.digest) == (0, 0x70, digest)
    assert cid.bytes == mh


def test_cid_v1_from_bytes_and_strings() -> None:
    digest = hashlib.sha256(b"raw leaf").digest()
    raw = b"\x01\x55\x12\x20" + digest
    cid = decode_cid(raw)
    assert (cid.version, cid.codec) == (1, 0x55)
    assert cid.bytes == raw
    text = "b" + base64.b32encode(raw).decode().rstrip("=").lower()
    assert str(cid) == text
    assert parse_cid(text) == cid
    assert parse_cid("B" + text[1:].upper()) == cid
    assert parse_cid("z" + b58_encode(raw)) == cid


def test_parse_cid_v0_string() -> None:
    cid = parse_cid(EMPTY_DIR_V0)
    assert cid.version == 0 and cid.multihash.code == 0x12
    assert str(cid) == EMPTY_DIR_V0


@pytest.mark.parametrize("raw", [
    b"\x02\x55\x12\x20" + b"\0" * 32,          # version 2
    b"\x01\x55\x12\x20" + b"\0" * 31,          # digest truncated
    b"\x01\x55\x12\x20" + b"\0" * 33,          # trailing byte
    b"\x12\x20" + b"\0" * 31,                  # not 34 bytes: not a v0, and version 18
])
def test_decode_cid_rejects(raw: bytes) -> None:
    with pytest.raises(MultiformatError):
        decode_cid(raw)


def test_multihash_verify_functions() -> None:
    data = b"some block"
    for code, fn in [(0x12, hashlib.sha256), (0x13, hashlib.sha512), (0x11, hashlib.sha1),
                     (0x16, hashlib.sha3_256)]:
        assert Multihash(code, fn(data).digest()).verify(data)
        assert not Multihash(code, fn(data).digest()).verify(data + b"!")
    b2 = hashlib.blake2b(data, digest_size=32).digest()
    assert Multihash(0xB220, b2).verify(data)
    assert Multihash(0x00, data).verify(data)  # identity
    with pytest.raises(MultiformatError):
        Multihash(0x1B, b"\0" * 32).verify(data)  # keccak-256: not supported


def test_against_py_cid_oracle() -> None:
    for i in range(50):
        data = b"block %d" % i
        mh = mhlib.digest(data, "sha2-256").encode()
        for version, codec, code in [(0, "dag-pb", 0x70), (1, "raw", 0x55),
                                     (1, "dag-pb", 0x70), (1, "dag-cbor", 0x71)]:
            oracle = cidlib.make_cid(version, codec, mh)
            ours = decode_cid(bytes(oracle.buffer))
            assert ours == CID(version, code, Multihash(0x12, hashlib.sha256(data).digest()))
            assert str(ours) == (oracle.encode("base32").decode() if version == 1
                                 else str(oracle))
            assert parse_cid(str(ours)).bytes == bytes(oracle.buffer)
