# Extern declarations for zlib (raw deflate via windowBits -15, crc32_combine). Declarations only.


cdef extern from "zlib.h" nogil:
    ctypedef unsigned char Bytef
    ctypedef unsigned int uInt
    ctypedef unsigned long uLong
    ctypedef long z_off_t

    ctypedef struct z_stream:
        Bytef *next_in
        uInt avail_in
        uLong total_in
        Bytef *next_out
        uInt avail_out
        uLong total_out
        const char *msg
        void *zalloc
        void *zfree
        void *opaque

    int Z_OK
    int Z_STREAM_END
    int Z_BUF_ERROR
    int Z_NO_FLUSH
    int Z_FINISH
    int Z_DEFLATED
    int Z_DEFAULT_STRATEGY

    int deflateInit2(z_stream *strm, int level, int method, int windowBits, int memLevel,
                     int strategy)
    int deflate(z_stream *strm, int flush)
    int deflateReset(z_stream *strm)
    int deflateEnd(z_stream *strm)
    const char *zError(int err)
    uLong crc32(uLong crc, const Bytef *buf, uInt length)
    uLong crc32_combine(uLong crc1, uLong crc2, z_off_t len2)
