# cython: language_level=3, binding=False
"""IPv4 addresses read in C: a proxy's forwarding header names a new client
on most requests, and ``ipaddress`` takes microseconds to read one."""

from cpython.unicode cimport PyUnicode_GET_LENGTH


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)
    const char* PyUnicode_DATA(object text)


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
