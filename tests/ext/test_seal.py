"""ext/seal.pyx: one native pass equals AES-GCM (cryptography) + stored blocks + XXH3; the tag
is checked; the key page is kept out of core files and forked children; the GIL is released."""

import ctypes
import os
import pickle
import random
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dsbackup._ext.checksum import xxh3_64
from dsbackup._ext.compress import deflate_body
from dsbackup._ext.seal import GcmKey, open_stored, seal_into, seal_stored, sealed_size

STORED = 65535
# around the 512 padding and the 65535 stored-block edges, with the 16-byte tag straddling one
SIZES = [0, 1, 15, 16, 17, 495, 496, 497, 511, 512, STORED - 16, STORED - 15, STORED - 8,
         STORED - 1, STORED, STORED + 1, 2 * STORED - 16, 2 * STORED - 10, 2 * STORED,
         3 * STORED - 16 - 512, 1 << 20, (1 << 20) + 7]


@pytest.mark.parametrize("n", SIZES + random.Random(5).sample(range(1, 300_000), 12))
@pytest.mark.parametrize("pad_to", [512, 1])
def test_equals_cryptography_then_stored_blocks(n, pad_to):
    rnd = random.Random(n * 7 + pad_to)
    k, nonce, aad = rnd.randbytes(32), rnd.randbytes(12), rnd.randbytes(rnd.choice([0, 42]))
    data = rnd.randbytes(n)
    sealed = AESGCM(k).encrypt(nonce, data, aad)
    ref = deflate_body(sealed, 0, pad_to)
    body, digest = seal_stored(GcmKey(k), nonce, aad, data, pad_to)
    assert bytes(body.data) == bytes(ref.data)
    assert (body.crc32, body.size, body.input_len) == (ref.crc32, ref.size, ref.input_len)
    assert digest == xxh3_64(sealed)
    assert open_stored(GcmKey(k), nonce, aad, sealed) == data


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("pad_to", [512, 1])
def test_seal_into_a_reused_buffer_equals_seal_stored(n, pad_to):
    """Into a buffer holding an earlier member's bytes (and longer than needed): the same
    bytes and fields as seal_stored, nothing written past them; a short buffer refused."""
    rnd = random.Random(n + pad_to)
    k, nonce, aad = GcmKey(rnd.randbytes(32)), rnd.randbytes(12), rnd.randbytes(7)
    data = rnd.randbytes(n)
    body, digest = seal_stored(k, nonce, aad, data, pad_to)
    need = sealed_size(n, pad_to)
    assert need == len(body.data)
    out = bytearray(rnd.randbytes(need + 100))
    tail = bytes(out[need:])
    assert seal_into(k, nonce, aad, data, out, pad_to) == (
        need, body.crc32, body.size, body.input_len, digest)
    assert out[:need] == body.data and out[need:] == tail
    with pytest.raises(ValueError, match="output buffer"):
        seal_into(k, nonce, aad, data, bytearray(need - 1), pad_to)


def test_any_change_fails_the_tag():
    rnd = random.Random(1)
    k, nonce, aad = rnd.randbytes(32), rnd.randbytes(12), b"associated"
    data = rnd.randbytes(100_000)
    g = GcmKey(k)
    sealed = AESGCM(k).encrypt(nonce, data, aad)
    for _ in range(200):
        bad = bytearray(sealed)
        bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
        assert open_stored(g, nonce, aad, bad) is None
    assert open_stored(g, nonce, aad + b"x", sealed) is None
    assert open_stored(g, bytes(12), aad, sealed) is None
    assert open_stored(GcmKey(bytes(32)), nonce, aad, sealed) is None
    with pytest.raises(ValueError):
        open_stored(g, nonce, aad, sealed[:15])
    with pytest.raises(ValueError):
        seal_stored(g, nonce[:8], aad, data)
    with pytest.raises(ValueError):
        GcmKey(bytes(16))


def test_key_is_never_shown_or_pickled():
    g = GcmKey(b"\x42" * 32)
    assert repr(g) == "<GcmKey>"
    with pytest.raises(TypeError):
        pickle.dumps(g)


def _vmflags(address: int) -> set[str]:
    """The VmFlags of the mapping holding `address` (/proc/self/smaps)."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    inside = False
    for line in lines:
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags:"):
            return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux /proc")
def test_secret_buffers_stay_out_of_core_files_and_children():
    from dsbackup.archive.crypto import _zero, secret_buffer

    buf = secret_buffer(b"\x5a" * 32)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    flags = _vmflags(addr)
    assert "dd" in flags  # MADV_DONTDUMP
    assert "wf" in flags  # MADV_WIPEONFORK (Linux >= 4.14)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child sees zeros where the parent has the secret
        os.write(w, bytes(buf))
        os._exit(0)
    os.close(w)
    seen = os.read(r, 64)
    os.waitpid(pid, 0)
    os.close(r)
    assert seen == bytes(32) and bytes(buf) == b"\x5a" * 32
    _zero(buf)
    assert bytes(buf) == bytes(32)


def test_seal_releases_gil():
    g = GcmKey(os.urandom(32))
    data = os.urandom(32 << 20)
    nonce = bytes(12)
    spans = [None, None]
    barrier = threading.Barrier(2)

    def worker(i):
        barrier.wait()
        t0 = time.perf_counter()
        seal_stored(g, nonce, b"", data)
        spans[i] = (t0, time.perf_counter())

    best = 0.0
    for _ in range(3):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (a0, a1), (b0, b1) = spans
        best = max(best, max(0.0, min(a1, b1) - max(a0, b0)) / min(a1 - a0, b1 - b0))
    assert best > 0.7, f"seal_stored calls did not overlap ({best:.2f})"
