"""The rescan's reading of encrypted chunk bodies (dsbackup.archive.resume): the payload's
length is not in the clear, it is where the records end inside the zero padding."""

from __future__ import annotations

import pytest

from dsbackup._ext.compress import deflate_body
from dsbackup._ext.payload import encode_records
from dsbackup.archive.resume import _sealed_payload
from dsbackup.errors import IntegrityError


@pytest.mark.parametrize("values", [
    [b"x", b"yy"],
    [b"x", b"y\0\0\0"],  # the last value ends in zeros, as the padding does
    [b"a" * 494, b"b"],  # no padding at all (512 bytes)
    [b"a" * 496, b"\0" * 20],
])
def test_the_payload_is_found_inside_its_padding(values):
    payload = encode_records([b"k1", b"k2"], values)
    body = bytes(deflate_body(payload + bytes(-len(payload) % 512), 1).data)
    got, info = _sealed_payload(body, "w")
    assert bytes(got) == payload and info.record_count == 2


def test_a_body_that_is_not_a_padded_payload_is_damage():
    payload = encode_records([b"k1"], [b"v"])
    for raw in (payload + b"\1" + bytes(-len(payload) % 512 - 1),  # not zeros after it
                payload + bytes(-len(payload) % 512 + 512)):  # a whole block of padding more
        with pytest.raises(IntegrityError):
            _sealed_payload(bytes(deflate_body(raw, 1).data), "w")
