# Key glob matching for exclude patterns (included by framing.pyx).
#
# ``*`` matches any run of bytes without '/', ``**`` any run including '/', ``?`` exactly one
# byte other than '/', everything else is literal; a pattern matches the whole key. Matching is
# a Thompson NFA over the pattern tokens (O(len(key) * len(pattern)), no backtracking blow-up)
# with a fast literal-prefix rejection.

cdef enum:
    TOK_LIT = 0
    TOK_ANY1 = 1
    TOK_STAR = 2
    TOK_DSTAR = 3
    MAX_TOKENS = 1024


cdef inline void _activate(unsigned char *states, const unsigned char *tok, size_t ntok,
                           size_t i) noexcept nogil:
    # state i and every state reachable by letting stars match nothing
    while True:
        states[i] = 1
        if i < ntok and (tok[i] == TOK_STAR or tok[i] == TOK_DSTAR):
            i += 1
        else:
            return


cdef int _match_pattern(const ds_pattern *pt, const unsigned char *s, size_t n) noexcept nogil:
    cdef unsigned char a[MAX_TOKENS + 1]
    cdef unsigned char b[MAX_TOKENS + 1]
    cdef unsigned char *cur = a
    cdef unsigned char *nxt = b
    cdef unsigned char *tmp
    cdef const unsigned char *tok = pt.tok
    cdef size_t ntok = pt.ntok, pre = pt.prefix_len, i, j
    cdef unsigned char c, t
    cdef int alive
    if n < pre or memcmp(s, pt.lit, pre) != 0:
        return 0
    if pre == ntok:
        return n == ntok
    if pre + 1 == ntok and tok[pre] == TOK_DSTAR:
        return 1
    memset(cur, 0, ntok + 1)
    _activate(cur, tok, ntok, pre)
    for j in range(pre, n):
        c = s[j]
        memset(nxt, 0, ntok + 1)
        alive = 0
        for i in range(pre, ntok):
            if not cur[i]:
                continue
            t = tok[i]
            if t == TOK_LIT:
                if pt.lit[i] == c:
                    _activate(nxt, tok, ntok, i + 1)
                    alive = 1
            elif t == TOK_ANY1:
                if c != 0x2f:
                    _activate(nxt, tok, ntok, i + 1)
                    alive = 1
            elif t == TOK_STAR:
                if c != 0x2f:
                    _activate(nxt, tok, ntok, i)
                    alive = 1
            else:
                _activate(nxt, tok, ntok, i)
                alive = 1
        if not alive:
            return 0
        tmp = cur
        cur = nxt
        nxt = tmp
    return cur[ntok]


cdef int matcher_match(const ds_matcher *m, const unsigned char *key, size_t klen) noexcept nogil:
    cdef size_t i
    for i in range(m.npats):
        if _match_pattern(&m.pats[i], key, klen):
            return 1
    return 0


cdef class KeyMatcher:
    """Match keys against glob patterns (``*``, ``**``, ``?``; see module docs)."""

    cdef ds_matcher m
    cdef readonly tuple patterns

    def __cinit__(self, patterns):
        cdef list pats = []
        cdef bytes pb
        cdef size_t i, k, ntok
        cdef ds_pattern *pt
        if isinstance(patterns, (str, bytes)):
            raise TypeError("patterns must be a list of str or bytes, not a single pattern")
        for p in patterns:
            if isinstance(p, str):
                pb = p.encode("utf-8", "surrogateescape")
            elif isinstance(p, (bytes, bytearray, memoryview)):
                pb = bytes(p)
            else:
                raise TypeError(f"pattern must be str or bytes, not {type(p).__name__}")
            pats.append(pb)
        self.patterns = tuple(pats)
        self.m.npats = 0
        self.m.pats = <ds_pattern *>malloc((len(pats) + 1) * sizeof(ds_pattern))
        if self.m.pats == NULL:
            raise MemoryError("KeyMatcher: cannot allocate patterns")
        for pb in pats:
            pt = &self.m.pats[self.m.npats]
            pt.tok = <unsigned char *>malloc(len(pb) + 1)
            pt.lit = <unsigned char *>malloc(len(pb) + 1)
            if pt.tok == NULL or pt.lit == NULL:
                free(pt.tok)
                free(pt.lit)
                raise MemoryError("KeyMatcher: cannot allocate a pattern")
            self.m.npats += 1
            ntok = 0
            i = 0
            while i < <size_t>len(pb):
                ch = pb[i]
                if ch == 0x2a:
                    k = i
                    while k < <size_t>len(pb) and pb[k] == 0x2a:
                        k += 1
                    pt.tok[ntok] = TOK_STAR if k - i == 1 else TOK_DSTAR
                    pt.lit[ntok] = 0
                    i = k
                elif ch == 0x3f:
                    pt.tok[ntok] = TOK_ANY1
                    pt.lit[ntok] = 0
                    i += 1
                else:
                    pt.tok[ntok] = TOK_LIT
                    pt.lit[ntok] = ch
                    i += 1
                ntok += 1
            if ntok > MAX_TOKENS:
                raise ValueError(f"pattern {pb!r} is longer than {MAX_TOKENS} tokens")
            pt.ntok = ntok
            pt.prefix_len = 0
            while pt.prefix_len < ntok and pt.tok[pt.prefix_len] == TOK_LIT:
                pt.prefix_len += 1

    def __dealloc__(self):
        cdef size_t i
        if self.m.pats != NULL:
            for i in range(self.m.npats):
                free(self.m.pats[i].tok)
                free(self.m.pats[i].lit)
            free(self.m.pats)

    def __reduce__(self):
        return (KeyMatcher, (list(self.patterns),))

    def match(self, const unsigned char[::1] key) -> bool:
        """True when ``key`` matches any pattern."""
        cdef size_t n = key.shape[0]
        cdef unsigned char empty = 0
        return matcher_match(&self.m, &key[0] if n else &empty, n) == 1

    def __repr__(self) -> str:
        return f"KeyMatcher({[p.decode('utf-8', 'surrogateescape') for p in self.patterns]!r})"
