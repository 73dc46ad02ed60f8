# Extern declarations for OpenSSL's libcrypto (EVP AEAD ciphers, cleanse). Declarations only;
# see seal.pyx. The EVP calls used exist unchanged in OpenSSL 1.1.1 and 3.x.


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER:
        pass

    ctypedef struct EVP_CIPHER_CTX:
        pass

    ctypedef struct ENGINE:
        pass

    enum:
        EVP_CTRL_GCM_SET_IVLEN
        EVP_CTRL_GCM_GET_TAG
        EVP_CTRL_GCM_SET_TAG

    const EVP_CIPHER *EVP_aes_256_gcm()
    EVP_CIPHER_CTX *EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr)
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_EncryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                          const unsigned char *inp, int inl)
    int EVP_EncryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl)
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_DecryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                          const unsigned char *inp, int inl)
    int EVP_DecryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl)


cdef extern from "openssl/crypto.h" nogil:
    void OPENSSL_cleanse(void *ptr, size_t length)


cdef extern from "openssl/err.h" nogil:
    void ERR_clear_error()
    unsigned long ERR_get_error()
    void ERR_error_string_n(unsigned long e, char *buf, size_t len)
