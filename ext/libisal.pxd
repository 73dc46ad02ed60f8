# Extern declarations for ISA-L (igzip_lib.h, crc.h). Declarations only; see compress.pyx.
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "isa-l/igzip_lib.h" nogil:
    int ISAL_DEF_LVL1_DEFAULT
    int ISAL_DEF_LVL2_DEFAULT
    int ISAL_DEF_LVL3_DEFAULT
    int NO_FLUSH
    int SYNC_FLUSH
    int FULL_FLUSH
    int IGZIP_DEFLATE
    int IGZIP_GZIP_NO_HDR
    int COMP_OK
    int ISAL_DEFLATE
    int ISAL_DECOMP_OK
    int ISAL_END_INPUT
    int ISAL_OUT_OVERFLOW
    int ISAL_NEED_DICT
    int ISAL_INVALID_BLOCK
    int ISAL_INVALID_SYMBOL
    int ISAL_INVALID_LOOKBACK

    enum isal_zstate_state:
        ZSTATE_END

    enum isal_block_state:
        ISAL_BLOCK_FINISH

    struct isal_zstate:
        isal_zstate_state state

    struct isal_zstream:
        uint8_t *next_in
        uint32_t avail_in
        uint32_t total_in
        uint8_t *next_out
        uint32_t avail_out
        uint32_t total_out
        uint32_t level
        uint32_t level_buf_size
        uint8_t *level_buf
        uint16_t end_of_stream
        uint16_t flush
        uint16_t gzip_flag
        uint16_t hist_bits
        isal_zstate internal_state

    struct inflate_state:
        uint8_t *next_out
        uint32_t avail_out
        uint32_t total_out
        uint8_t *next_in
        uint64_t read_in
        uint32_t avail_in
        int32_t read_in_length
        isal_block_state block_state
        uint32_t bfinal
        uint32_t crc_flag
        uint32_t hist_bits

    void isal_deflate_init(isal_zstream *stream)
    void isal_deflate_reset(isal_zstream *stream)
    int isal_deflate(isal_zstream *stream)
    void isal_inflate_init(inflate_state *state)
    void isal_inflate_reset(inflate_state *state)
    int isal_inflate(inflate_state *state)


cdef extern from "isa-l/crc.h" nogil:
    uint32_t crc32_gzip_refl(uint32_t init_crc, const unsigned char *buf, uint64_t len)
