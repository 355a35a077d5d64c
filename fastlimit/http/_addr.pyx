# cython: language_level=3, binding=False
"""Client addresses read in C: a proxy's forwarding header names a new
client on most requests, and ``ipaddress`` takes microseconds to read one.
``ipv4`` reads a dotted quad; ``ip_key`` is the per-IP key of an address."""

from cpython.unicode cimport PyUnicode_GET_LENGTH
from libc.stdint cimport uint16_t, uint32_t


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)
    const char* PyUnicode_DATA(object text)
    object PyUnicode_FromStringAndSize(const char* text, Py_ssize_t size)
    Py_ssize_t PyUnicode_FindChar(object text, Py_UCS4 ch, Py_ssize_t start, Py_ssize_t end,
                                  int direction) except -2


cdef extern from "<stdio.h>":
    int snprintf(char* out, size_t size, const char* fmt, ...)


cpdef long long ipv4(str text):
    """The value of ``text`` as a dotted-quad IPv4 address, exactly as
    ``ipaddress.IPv4Address`` reads it (four decimal octets of at most 255,
    no leading zeros, nothing around them); -1 if it is not one.

    Example:
        >>> ipv4("10.0.0.1"), ipv4("010.0.0.1"), ipv4("::1")
        (167772161, -1, -1)
    """
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text), i
    cdef const char* p
    cdef long long value = 0
    cdef int octet = 0, digits = 0, dots = 0
    cdef char c
    if n < 7 or n > 15 or not PyUnicode_IS_ASCII(text):
        return -1
    p = PyUnicode_DATA(text)
    for i in range(n):
        c = p[i]
        if c == b".":
            if digits == 0 or dots == 3:
                return -1
            value = value << 8 | octet
            octet = digits = 0
            dots += 1
        elif b"0" <= c <= b"9":
            if digits and octet == 0:
                return -1  # a leading zero: ipaddress refuses it (octal or decimal?)
            octet = octet * 10 + (c - 48)  # 48: "0"
            digits += 1
            if octet > 255:
                return -1
        else:
            return -1
    if digits == 0 or dots != 3:
        return -1
    return value << 8 | octet


cdef inline int _hex(char c):
    if b"0" <= c <= b"9":
        return c - 48
    if b"a" <= c <= b"f":
        return c - 87
    if b"A" <= c <= b"F":
        return c - 55
    return -1


cdef int _ipv6(str text, Py_ssize_t n, uint16_t* words) except -2:
    """Read the first ``n`` characters of ``text`` (ASCII) as an IPv6
    address into ``words`` (8 groups), as ``ipaddress`` reads one; 0, or -1
    if it is not one."""
    cdef const char* p = PyUnicode_DATA(text)
    cdef uint16_t got[8]
    cdef int ng = 0, gap = -1, digits, d, k
    cdef Py_ssize_t i = 0
    cdef uint32_t value
    cdef long long v4
    if n < 2 or n > 45:
        return -1
    if p[0] == b":":
        if p[1] != b":":
            return -1
        gap = 0
        i = 2
    while i < n:
        value = 0
        digits = 0
        while i + digits < n:
            d = _hex(p[i + digits])
            if d < 0:
                break
            value = value << 4 | d
            digits += 1
            if digits > 4:
                return -1
        if i + digits < n and p[i + digits] == b".":   # an IPv4 tail: two groups
            if ng > 6:
                return -1
            v4 = ipv4(text[i:n])
            if v4 < 0:
                return -1
            got[ng] = <uint16_t>(v4 >> 16)
            got[ng + 1] = <uint16_t>(v4 & 0xFFFF)
            ng += 2
            i = n
            break
        if digits == 0 or ng == 8:
            return -1
        got[ng] = <uint16_t>value
        ng += 1
        i += digits
        if i == n:
            break
        if p[i] != b":":
            return -1
        i += 1
        if i < n and p[i] == b":":
            if gap >= 0:
                return -1
            gap = ng
            i += 1
        elif i == n:
            return -1   # a lone trailing ":"
    if (gap < 0 and ng != 8) or (gap >= 0 and ng > 7):
        return -1
    if gap < 0:
        gap = ng
    for k in range(8):
        words[k] = 0
    for k in range(gap):
        words[k] = got[k]
    for k in range(ng - gap):
        words[8 - (ng - gap) + k] = got[gap + k]
    return 0


cpdef str ip_key(str address, int ipv6_prefix):
    """The key that per-IP limits count ``address`` under.

    IPv4 (and anything that is not an IPv6 address: ``"unix"``, a name) is
    its own key.  An IPv6 address counts under its ``/ipv6_prefix``
    network, written as ``ipaddress`` writes it (one host is given a whole
    /64, so counting each address would let it have 2**64 buckets); 128
    counts each address.  An IPv4-mapped ``::ffff:a.b.c.d`` is the IPv4
    address ``a.b.c.d``, and a zone (``%eth0``) is dropped.

    Example:
        >>> ip_key("2001:db8:1:2:a:b:c:d", 64), ip_key("::ffff:10.0.0.1", 64)
        ('2001:db8:1:2::/64', '10.0.0.1')
    """
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(address), zone
    cdef uint16_t w[8]
    cdef char out[64]
    cdef int k, used = 0, run = 0, best = -1, best_len = 1, start = -1, bits
    if PyUnicode_FindChar(address, 58, 0, n, 1) < 0 or not PyUnicode_IS_ASCII(address):
        return address   # ":" nowhere: not IPv6
    zone = PyUnicode_FindChar(address, 37, 0, n, 1)   # "%"
    if zone >= 0:
        n = zone
    if _ipv6(address, n, w) < 0:
        return address
    if w[0] == w[1] == w[2] == w[3] == w[4] == 0 and w[5] == 0xFFFF:
        return f"{w[6] >> 8}.{w[6] & 0xFF}.{w[7] >> 8}.{w[7] & 0xFF}"
    if not 0 <= ipv6_prefix <= 128:
        raise ValueError(f"ipv6_prefix must be between 0 and 128, got {ipv6_prefix}")
    for k in range(8):
        bits = ipv6_prefix - 16 * k
        if bits <= 0:
            w[k] = 0
        elif bits < 16:
            w[k] &= <uint16_t>(0xFFFF << (16 - bits))
    # RFC 5952: the longest run of two or more zero groups (the first, on a
    # tie) becomes "::"
    for k in range(8):
        if w[k] == 0:
            if run == 0:
                start = k
            run += 1
            if run > best_len:
                best, best_len = start, run
        else:
            run = 0
    k = 0
    while k < 8:
        if k == best:
            used += snprintf(out + used, 64 - used, "::")
            k += best_len
            if k == 8:
                break
            continue
        used += snprintf(out + used, 64 - used, "%x" if used == 0 or out[used - 1] == b":"
                         else ":%x", w[k])
        k += 1
    if ipv6_prefix < 128:
        used += snprintf(out + used, 64 - used, "/%d", ipv6_prefix)
    return PyUnicode_FromStringAndSize(out, used)
