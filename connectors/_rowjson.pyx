# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Native twin of :class:`connectors.rowjson.PyRowEncoder`: one pgoutput TupleData -> the row's JSON bytes.

The connector's hot path is "an INSERT of a known relation": parse the TupleData (kind byte, length, text
value per column), type each value, write the row as JSON. In CPython that is ~1 µs per column; here it is
one C loop that copies PostgreSQL's text straight into the JSON document when the text already *is* the
JSON form (canonical integers, ASCII strings without escapes, ``t``/``f``, JSON columns, the walsender's UTC
timestamps). Anything else calls the column's Python fallback (the same conversion the pure-Python encoder
uses), and any refusal returns ``None`` so the caller takes the careful decoder, which names the problem.

The contract, checked by ``tests/unit/test_rowjson.py`` on generated rows: for every input,
``encode`` returns exactly what :class:`connectors.rowjson.PyRowEncoder` returns.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.string cimport memcpy

# column kinds (connectors.rowjson.Kind mirrors these numbers)
cdef enum:
    K_OTHER = 0
    K_TEXT = 1
    K_INT = 2
    K_BOOL = 3
    K_JSON = 4
    K_TS = 5


cdef struct Out:
    char *data
    Py_ssize_t length
    Py_ssize_t capacity


cdef int _reserve(Out *out, Py_ssize_t extra) except -1:
    cdef Py_ssize_t want = out.length + extra
    cdef char *grown
    if want <= out.capacity:
        return 0
    while out.capacity < want:
        out.capacity *= 2
    grown = <char *>PyMem_Realloc(out.data, out.capacity)
    if grown == NULL:
        raise MemoryError()
    out.data = grown
    return 0


cdef inline int _put(Out *out, const char *src, Py_ssize_t n) except -1:
    if out.length + n > out.capacity:
        _reserve(out, n)
    memcpy(out.data + out.length, src, n)
    out.length += n
    return 0


cdef inline bint _plain_ascii(const unsigned char *s, Py_ssize_t n) noexcept:
    """True when the bytes are their own JSON string body (orjson escapes only ``"``, ``\\`` and < 0x20)."""
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = s[i]
        if c < 0x20 or c >= 0x80 or c == 0x22 or c == 0x5C:
            return False
    return True


cdef inline bint _ascii(const unsigned char *s, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if s[i] >= 0x80:
            return False
    return True


cdef inline bint _canonical_int(const unsigned char *s, Py_ssize_t n) noexcept:
    """``-?(0|[1-9][0-9]*)`` within int64 range by length (what PostgreSQL prints); ``-0`` excluded."""
    cdef Py_ssize_t i = 0
    if n > 0 and s[0] == 0x2D:  # '-'
        i = 1
    if n - i < 1 or n - i > 18:
        return False
    if s[i] == 0x30:  # '0'
        return n == 1
    for i in range(i, n):
        if s[i] < 0x30 or s[i] > 0x39:
            return False
    return True


cdef inline bint _utc_timestamp(Out *out, const unsigned char *s, Py_ssize_t n) except -1:
    """'2024-01-01 00:00:00[.5]+00' -> '"2024-01-01T00:00:00[.500000]+00:00"' (the walsender's output with
    TimeZone=UTC, DateStyle=ISO); False when the text has any other shape."""
    cdef Py_ssize_t clock, frac, i
    if n < 22 or not _plain_ascii(s, n):
        return False
    if not (s[n - 3] == 0x2B and s[n - 2] == 0x30 and s[n - 1] == 0x30):  # '+00'
        return False
    if s[4] != 0x2D or s[10] != 0x20 or s[13] != 0x3A:  # '-', ' ', ':'
        return False
    clock = n - 14  # s[11:n-3]
    if clock == 8:
        frac = 0
    else:
        if s[19] != 0x2E or clock <= 9 or clock > 15:  # '.'
            return False
        frac = clock - 9
        for i in range(20, 20 + frac):
            if s[i] < 0x30 or s[i] > 0x39:
                return False
    _reserve(out, 36)
    out.data[out.length] = 0x22
    memcpy(out.data + out.length + 1, s, 10)
    out.data[out.length + 11] = 0x54  # 'T'
    memcpy(out.data + out.length + 12, s + 11, 8)
    out.length += 20
    if frac:
        out.data[out.length] = 0x2E
        memcpy(out.data + out.length + 1, s + 20, frac)
        for i in range(frac, 6):
            out.data[out.length + 1 + i] = 0x30
        out.length += 7
    memcpy(out.data + out.length, b'+00:00"', 7)
    out.length += 7
    return True


cdef class RowEncoder:
    """One relation's columns: how to write each as JSON, and which to also return as Python values."""

    cdef Py_ssize_t ncols
    cdef int *kinds
    cdef list prefixes
    cdef list fallbacks
    cdef tuple wanted
    cdef Py_ssize_t *starts
    cdef Py_ssize_t *ends

    def __cinit__(self, kinds, prefixes, fallbacks, wanted):
        """``kinds``: column kind numbers; ``prefixes``: ``b'{"name":'`` then ``b',"name":'`` per column;
        ``fallbacks``: per column ``raw bytes -> JSON bytes`` (may raise: the row is refused);
        ``wanted``: ``(column index or -1, raw bytes -> value)`` pairs whose values ``encode`` also returns."""
        cdef Py_ssize_t i
        self.ncols = len(kinds)
        if len(prefixes) != self.ncols or len(fallbacks) != self.ncols:
            raise ValueError("one kind, prefix and fallback per column")
        self.kinds = <int *>PyMem_Malloc(max(1, self.ncols) * sizeof(int))
        self.starts = <Py_ssize_t *>PyMem_Malloc(max(1, self.ncols) * sizeof(Py_ssize_t))
        self.ends = <Py_ssize_t *>PyMem_Malloc(max(1, self.ncols) * sizeof(Py_ssize_t))
        if self.kinds == NULL or self.starts == NULL or self.ends == NULL:
            raise MemoryError()
        for i in range(self.ncols):
            self.kinds[i] = kinds[i]
        self.prefixes = [bytes(p) for p in prefixes]
        self.fallbacks = list(fallbacks)
        self.wanted = tuple((int(index), conv) for index, conv in wanted)
        for index, _ in self.wanted:
            if index >= self.ncols:
                raise ValueError("wanted column out of range")

    def __dealloc__(self):
        PyMem_Free(self.kinds)
        PyMem_Free(self.starts)
        PyMem_Free(self.ends)

    def encode(self, bytes buf, Py_ssize_t pos):
        """``(row JSON bytes, wanted values)`` for the TupleData at ``pos``, or ``None`` when the row needs
        the careful decoder (unchanged TOAST, binary values, a refused value, wrong column count, truncated
        or over-long message)."""
        cdef const unsigned char *b = <const unsigned char *>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef Py_ssize_t i, start, end, length
        cdef unsigned char kind
        cdef int ck
        cdef bytes prefix, piece
        cdef Out out
        if pos < 0 or pos + 2 > n:
            return None
        if ((b[pos] << 8) | b[pos + 1]) != self.ncols:
            return None
        pos += 2
        out.capacity = 2 * n + 64
        out.length = 0
        out.data = <char *>PyMem_Malloc(out.capacity)
        if out.data == NULL:
            raise MemoryError()
        try:
            for i in range(self.ncols):
                prefix = <bytes>self.prefixes[i]
                _put(&out, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix))
                if pos >= n:
                    return None
                kind = b[pos]
                if kind == 0x6E:  # 'n'
                    self.starts[i] = -1
                    _put(&out, b"null", 4)
                    pos += 1
                    continue
                if kind != 0x74 or pos + 5 > n:  # 't'
                    return None
                length = (
                    (<Py_ssize_t>b[pos + 1] << 24) | (<Py_ssize_t>b[pos + 2] << 16)
                    | (<Py_ssize_t>b[pos + 3] << 8) | <Py_ssize_t>b[pos + 4]
                )
                start = pos + 5
                end = start + length
                if end > n:
                    return None
                self.starts[i] = start
                self.ends[i] = end
                pos = end
                ck = self.kinds[i]
                if ck == K_TEXT and _plain_ascii(b + start, length):
                    _reserve(&out, length + 2)
                    out.data[out.length] = 0x22
                    memcpy(out.data + out.length + 1, b + start, length)
                    out.data[out.length + 1 + length] = 0x22
                    out.length += length + 2
                    continue
                if ck == K_INT and _canonical_int(b + start, length):
                    _put(&out, <const char *>(b + start), length)
                    continue
                if ck == K_BOOL and length == 1 and (b[start] == 0x74 or b[start] == 0x66):
                    if b[start] == 0x74:
                        _put(&out, b"true", 4)
                    else:
                        _put(&out, b"false", 5)
                    continue
                if ck == K_JSON and _ascii(b + start, length):  # (non-ASCII: UTF-8 checked in Python)
                    _put(&out, <const char *>(b + start), length)
                    continue
                if ck == K_TS and _utc_timestamp(&out, b + start, length):
                    continue
                # everything else: the pure-Python conversion of this column
                try:
                    piece = self.fallbacks[i](buf[start:end])
                except Exception:
                    return None
                _put(&out, PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece))
            if pos != n:
                return None
            if self.ncols == 0:
                _put(&out, b"{}", 2)
            else:
                _put(&out, b"}", 1)
            values = []
            for index, conv in self.wanted:
                if index < 0 or self.starts[index] < 0:
                    values.append(None)
                    continue
                try:
                    values.append(conv(buf[self.starts[index]:self.ends[index]]))
                except Exception:
                    return None
            return PyBytes_FromStringAndSize(out.data, out.length), tuple(values)
        finally:
            PyMem_Free(out.data)
