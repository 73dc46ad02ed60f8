# C-level types of keymatch.pyx, shared with framing.pyx, planner.pyx and lmdbscan.pyx. Types
# only: the functions are reached through the capsule ``dsbackup._ext.keymatch._C_API`` (a
# ds_keymatch_api*), so no module is imported by its bare name at run time.


ctypedef struct ds_pattern:
    unsigned char *tok        # token kinds (see keymatch.pyx: TOK_*)
    unsigned char *lit        # literal byte of each LIT token, a NUL, then (when the
                              # pattern has a class) a 32-byte bitmap per token
    size_t ntok
    size_t prefix_len         # number of leading LIT tokens


ctypedef struct ds_matcher:
    ds_pattern *pats
    size_t npats


ctypedef struct ds_keymatch_api:
    const ds_matcher *(*matcher_of)(object matcher) except? NULL   # NULL for None
    # 1 when the key matches any pattern
    int (*matcher_match)(const ds_matcher *m, const unsigned char *key, size_t klen) noexcept nogil
