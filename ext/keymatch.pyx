r"""Key glob matching: the one pattern dialect of dsbackup (docs/PATTERNS.md). Used by backup
--exclude, restore --pattern, migration filters, through dsbackup.patterns.

``*`` any run of bytes without '/'; ``**`` as a whole segment (``/**/``, a leading ``**/``)
zero or more whole segments, anywhere else (a trailing ``/**``, ``a**b``) any run of bytes
including '/'; ``?`` one byte other than '/'; ``[...]`` one byte of a class (ranges,
``[!...]`` negation; never '/'); ``\`` makes the next byte literal. A pattern matches the whole
key. Matching is a Thompson NFA over the pattern tokens (O(len(key) * len(pattern)), no
backtracking blow-up) with a fast literal-prefix rejection.

The C matcher is exported to framing.pyx, planner.pyx and lmdbscan.pyx through the capsule
``_C_API`` (a ``ds_keymatch_api*``, see keymatch.pxd).
"""

from cpython.pycapsule cimport PyCapsule_New
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

from keymatch cimport ds_keymatch_api, ds_matcher, ds_pattern


cdef enum:
    TOK_LIT = 0
    TOK_ANY1 = 1
    TOK_CLASS = 2
    # the tokens that may match nothing: from TOK_STAR up
    TOK_STAR = 3
    TOK_DSTAR = 4
    TOK_SEGS = 5    # "**/" at a segment start: (.*/)? — zero or more whole segments
    MAX_TOKENS = 1024


cdef inline void _activate(unsigned char *states, const unsigned char *tok, size_t ntok,
                           size_t i) noexcept nogil:
    # state i and every state reachable by letting stars match nothing
    while True:
        states[i] = 1
        if i < ntok and tok[i] >= TOK_STAR:
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
            elif t == TOK_DSTAR:
                _activate(nxt, tok, ntok, i)
                alive = 1
            elif t == TOK_SEGS:
                # stay inside the skipped segments; a '/' ends one, the rest may follow
                nxt[i] = 1
                if c == 0x2f:
                    _activate(nxt, tok, ntok, i + 1)
                alive = 1
            else:  # TOK_CLASS (an if/elif chain on t alone compiles to a C switch)
                if pt.lit[ntok + 1 + (i << 5) + (c >> 3)] & (1 << (c & 7)):
                    _activate(nxt, tok, ntok, i + 1)
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


def _parse_class(bytes pb, Py_ssize_t i):
    """The class starting at ``pb[i] == '['``: (32-byte bitmap, index after its ``]``)."""
    cdef Py_ssize_t n = len(pb), j = i + 1
    cdef int lo, hi, first = 1, neg = 0, b
    bits = bytearray(32)
    if j < n and pb[j] == 0x21:  # '!'
        neg = 1
        j += 1
    while True:
        if j >= n:
            raise ValueError(f"pattern {pb!r}: unterminated '['")
        lo = pb[j]
        if lo == 0x5d and not first:  # ']'
            break
        first = 0
        if lo == 0x5c:  # '\'
            j += 1
            if j >= n:
                raise ValueError(f"pattern {pb!r}: unterminated '['")
            lo = pb[j]
        elif lo == 0x2f and not neg:
            raise ValueError(f"pattern {pb!r}: '/' in a [...] class (a class never matches '/')")
        j += 1
        hi = lo
        if j + 1 < n and pb[j] == 0x2d and pb[j + 1] != 0x5d:  # 'a-z'
            j += 1
            hi = pb[j]
            if hi == 0x5c and j + 1 < n:
                j += 1
                hi = pb[j]
            j += 1
            if hi < lo:
                raise ValueError(f"pattern {pb!r}: reversed range {chr(lo)}-{chr(hi)} in [...]")
        if hi >= 0x80:
            raise ValueError(f"pattern {pb!r}: a [...] class matches one byte, "
                             f"so it takes ASCII characters only")
        for b in range(lo, hi + 1):
            bits[b >> 3] |= 1 << (b & 7)
    if neg:
        for b in range(32):
            bits[b] ^= 0xff
    bits[0x2f >> 3] &= ~(1 << (0x2f & 7)) & 0xff
    return bytes(bits), j + 1


def _tokenize(bytes pb):
    """(token kinds, literal bytes, class bitmaps or b'') of one pattern."""
    cdef Py_ssize_t i = 0, k, n = len(pb)
    cdef int ch
    tok = bytearray()
    lit = bytearray()
    cls = bytearray()
    while i < n:
        ch = pb[i]
        bitmap = None
        if ch == 0x5c:  # '\'
            if i + 1 >= n:
                raise ValueError(f"pattern {pb!r} ends with an unescaped '\\'")
            tok.append(TOK_LIT)
            lit.append(pb[i + 1])
            i += 2
        elif ch == 0x2a:  # '*'
            k = i
            while k < n and pb[k] == 0x2a:
                k += 1
            lit.append(0)
            if k - i == 1:
                tok.append(TOK_STAR)
            elif (i == 0 or pb[i - 1] == 0x2f) and k < n and pb[k] == 0x2f:
                tok.append(TOK_SEGS)
                k += 1
            else:
                tok.append(TOK_DSTAR)
            i = k
        elif ch == 0x3f:  # '?'
            tok.append(TOK_ANY1)
            lit.append(0)
            i += 1
        elif ch == 0x5b:  # '['
            bitmap, i = _parse_class(pb, i)
            tok.append(TOK_CLASS)
            lit.append(0)
        else:
            tok.append(TOK_LIT)
            lit.append(ch)
            i += 1
        if bitmap is not None or cls:
            cls += bitmap if bitmap is not None else bytes(32)
            if len(cls) < 32 * len(tok):  # first class: pad the tokens before it
                cls[0:0] = bytes(32 * len(tok) - len(cls))
    if len(tok) > MAX_TOKENS:
        raise ValueError(f"pattern {pb!r} is longer than {MAX_TOKENS} tokens")
    return bytes(tok), bytes(lit), bytes(cls)


cdef unsigned char *_copy(bytes b) except? NULL:
    cdef unsigned char *p
    if not b:
        return NULL
    p = <unsigned char *>malloc(len(b))
    if p == NULL:
        raise MemoryError("KeyMatcher: cannot allocate a pattern")
    memcpy(p, <const unsigned char *>b, len(b))
    return p


cdef class KeyMatcher:
    """Match keys against glob patterns (docs/PATTERNS.md). ``ValueError`` for a bad pattern."""

    cdef ds_matcher m
    cdef readonly tuple patterns

    def __cinit__(self, patterns):
        cdef list pats = []
        cdef list parsed = []
        cdef bytes pb, tok, lit, cls
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
            parsed.append(_tokenize(pb))
        self.patterns = tuple(pats)
        self.m.npats = 0
        self.m.pats = <ds_pattern *>malloc((len(pats) + 1) * sizeof(ds_pattern))
        if self.m.pats == NULL:
            raise MemoryError("KeyMatcher: cannot allocate patterns")
        for tok, lit, cls in parsed:
            pt = &self.m.pats[self.m.npats]
            memset(pt, 0, sizeof(ds_pattern))
            self.m.npats += 1
            pt.tok = _copy(tok + b"\0")
            pt.lit = _copy(lit + b"\0" + cls)  # the class bitmaps after the literals
            pt.ntok = len(tok)
            pt.prefix_len = 0
            while pt.prefix_len < pt.ntok and pt.tok[pt.prefix_len] == TOK_LIT:
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


cdef const ds_matcher *matcher_of(object m) except? NULL:
    if m is None:
        return NULL
    if not isinstance(m, KeyMatcher):
        raise TypeError(f"exclude must be a KeyMatcher or None, not {type(m).__name__}")
    return &(<KeyMatcher>m).m


# ----------------------------------------------------------------------------- C API


cdef ds_keymatch_api _api
_api.matcher_of = matcher_of
_api.matcher_match = matcher_match
_C_API = PyCapsule_New(&_api, "dsbackup._ext.keymatch._C_API", NULL)
