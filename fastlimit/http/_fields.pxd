from fastlimit._core cimport Decision

cdef list decision_fields(Decision decision, int reset_format, wall_now_ns, tuple limit,
                          bint raw)
