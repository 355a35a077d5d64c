cpdef long long ipv4(str text)
