# Compiler builtins used by the hot loops (GCC and Clang). Declarations only.


cdef extern from * nogil:
    void __builtin_prefetch(const void *addr) noexcept
