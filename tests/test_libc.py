import ctypes

from dsbackup._libc import libc


def test_libc_is_the_loaded_c_library_and_cached():
    lib = libc()
    assert lib is not None and lib is libc()
    strlen = lib.strlen
    strlen.argtypes = [ctypes.c_char_p]
    strlen.restype = ctypes.c_size_t
    assert strlen(b"dsbackup") == 8
