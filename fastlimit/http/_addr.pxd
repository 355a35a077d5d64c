cpdef long long ipv4(str text)
cpdef str ip_key(str address, int ipv6_prefix)
