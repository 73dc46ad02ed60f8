# C-level types of planner.pyx, shared with lmdbscan.pyx. Types only: the functions are reached
# through the capsule ``dsbackup._ext.planner._C_API`` (a ds_planner_api*), so no module is
# imported by its bare name at run time.
from libc.stdint cimport uint64_t

from framing cimport ds_buf, ds_keyhash
from keymatch cimport ds_matcher


ctypedef struct ds_plan:
    # one planned chunk: keys and value sizes only
    ds_buf first
    ds_buf last
    uint64_t count
    uint64_t payload_len
    uint64_t raw_bytes
    uint64_t keys_xxh3


ctypedef struct ds_planner:
    uint64_t chunk_size
    uint64_t chunk_max_bytes
    const ds_matcher *exclude
    ds_keyhash *keys
    ds_plan cur
    ds_buf prev
    int has_prev
    uint64_t records
    uint64_t raw_bytes
    uint64_t excluded_records
    uint64_t excluded_bytes


ctypedef struct ds_planner_api:
    int (*planner_init)(ds_planner *p, uint64_t chunk_size, uint64_t chunk_max_bytes,
                        const ds_matcher *exclude) noexcept nogil
    void (*planner_free)(ds_planner *p) noexcept nogil
    # 1: a plan was completed into *done (before this record), 0: not, <0: FR_* error
    int (*planner_add)(ds_planner *p, const unsigned char *key, size_t klen, uint64_t vlen,
                       ds_plan *done) noexcept nogil
    int (*planner_finish)(ds_planner *p, ds_plan *done) noexcept nogil
    void (*plan_free)(ds_plan *d) noexcept nogil
    object (*plan_to_py)(ds_plan *d)   # (first, last, records, payload len, keys, raw)
