# Extern declarations for libzstd (stable API only). Declarations only.
cdef extern from "zstd.h" nogil:
    ctypedef struct ZSTD_CCtx:
        pass
    ctypedef struct ZSTD_DCtx:
        pass

    ctypedef enum ZSTD_cParameter:
        ZSTD_c_compressionLevel
        ZSTD_c_checksumFlag
        ZSTD_c_contentSizeFlag
        ZSTD_c_dictIDFlag
        ZSTD_c_nbWorkers

    ctypedef enum ZSTD_dParameter:
        ZSTD_d_windowLogMax

    ctypedef enum ZSTD_ResetDirective:
        ZSTD_reset_session_only
        ZSTD_reset_parameters
        ZSTD_reset_session_and_parameters

    ctypedef struct ZSTD_inBuffer:
        const void *src
        size_t size
        size_t pos

    ctypedef struct ZSTD_outBuffer:
        void *dst
        size_t size
        size_t pos

    unsigned long long ZSTD_CONTENTSIZE_UNKNOWN
    unsigned long long ZSTD_CONTENTSIZE_ERROR
    int ZSTD_MAGICNUMBER

    ZSTD_CCtx *ZSTD_createCCtx()
    size_t ZSTD_freeCCtx(ZSTD_CCtx *cctx)
    size_t ZSTD_CCtx_setParameter(ZSTD_CCtx *cctx, ZSTD_cParameter param, int value)
    size_t ZSTD_CCtx_reset(ZSTD_CCtx *cctx, ZSTD_ResetDirective reset)
    size_t ZSTD_compress2(ZSTD_CCtx *cctx, void *dst, size_t dstCapacity, const void *src,
                          size_t srcSize)
    size_t ZSTD_compressBound(size_t srcSize)
    int ZSTD_minCLevel()
    int ZSTD_maxCLevel()

    ZSTD_DCtx *ZSTD_createDCtx()
    size_t ZSTD_freeDCtx(ZSTD_DCtx *dctx)
    size_t ZSTD_DCtx_setParameter(ZSTD_DCtx *dctx, ZSTD_dParameter param, int value)
    size_t ZSTD_DCtx_reset(ZSTD_DCtx *dctx, ZSTD_ResetDirective reset)
    size_t ZSTD_decompressStream(ZSTD_DCtx *zds, ZSTD_outBuffer *output, ZSTD_inBuffer *input)
    unsigned long long ZSTD_getFrameContentSize(const void *src, size_t srcSize)
    unsigned ZSTD_getDictID_fromFrame(const void *src, size_t srcSize)
    unsigned ZSTD_versionNumber()
    const char *ZSTD_versionString()

    unsigned ZSTD_isError(size_t code)
    const char *ZSTD_getErrorName(size_t code)
