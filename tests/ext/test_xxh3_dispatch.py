"""XXH3 through libxxhash's CPU-dispatched entry points (ext/xxh3_dispatch.h) is the reference
XXH3: on the sizes where the SIMD paths split (stripes, blocks, the 240-byte short path), at
every alignment, with seeds, one-shot and streaming; and the build uses them where the library
has them."""

import ctypes
import ctypes.util
import random
from pathlib import Path

import pytest
import xxhash

from dsbackup._ext import checksum, flatlist, framing, lmdbscan, payload, planner, seal

SIZES = [0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 239, 240, 241, 255, 256, 1023, 1024, 1025, 2047,
         4096, 4097, 16383, 16384, 65537, 262_144 + 1, (1 << 20) + 7]
DATA = random.Random(21).randbytes((1 << 20) + 7 + 64)


@pytest.mark.parametrize("size", SIZES)
def test_one_shot_equals_reference_at_every_alignment(size):
    for align in (0, 1, 7, 31, 63) if size <= 65537 else (0, 13):
        mv = memoryview(DATA)[align:align + size]
        ref = bytes(mv)
        assert checksum.xxh3_64(mv) == xxhash.xxh3_64_intdigest(ref), (size, align)
        assert checksum.xxh3_128(mv) == xxhash.xxh3_128_digest(ref), (size, align)
        for seed in (1, 0x9E3779B185EBCA87, 2**64 - 1):
            assert checksum.xxh3_64(mv, seed) == xxhash.xxh3_64_intdigest(ref, seed)


@pytest.mark.parametrize("piece", [1, 63, 64, 65, 240, 1000, 1024, 4096, 65536, 256 * 1024 + 3])
def test_streaming_equals_reference_for_any_piece_size(piece):
    data = DATA[5:5 + 700_001]
    for seed in (0, 12345):
        h64 = checksum.Xxh3_64(seed)
        h128 = checksum.Xxh3_128()
        mv = memoryview(data)
        for i in range(0, len(data), piece):
            h64.update(mv[i:i + piece])
            h128.update(mv[i:i + piece])
        assert h64.intdigest() == xxhash.xxh3_64_intdigest(data, seed)
        assert h128.digest() == xxhash.xxh3_128_digest(data)


def _library_dispatches() -> bool:
    for name in (ctypes.util.find_library("xxhash"), "libxxhash.so.0"):
        if name:
            try:
                return hasattr(ctypes.CDLL(name), "XXH3_128bits_update_dispatch")
            except OSError:
                continue
    return False


@pytest.mark.skipif(not _library_dispatches(),
                    reason="this libxxhash has no CPU-dispatched XXH3 (setup.py falls back)")
@pytest.mark.parametrize("module", [checksum, flatlist, framing, lmdbscan, payload, planner, seal])
def test_every_hashing_module_links_the_dispatched_functions(module):
    image = Path(module.__file__).read_bytes()
    assert b"XXH3_64bits_dispatch" in image or b"XXH3_64bits_update_dispatch" in image
    for plain in (b"XXH3_64bits\0", b"XXH3_64bits_update\0", b"XXH3_64bits_withSeed\0",
                  b"XXH3_128bits\0", b"XXH3_128bits_update\0"):
        assert plain not in image, plain
