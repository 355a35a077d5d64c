"""The core: the shared table and the GCRA, integers in and integers out.

It is compiled into ``fastlimit._core`` from ``fastlimit/_core.pyx`` and the
parts in this folder (one ``.pxi`` per concern: the slots and their claim
protocol, process liveness, keys, GCRA, quotas, leases, metrics; the C
headers beside them).  :mod:`fastlimit.core.gcra` states the GCRA's
arithmetic in Python, the one statement the C and the Redis script are
tested against; :mod:`fastlimit.core.quota` does the same for calendar
quotas; :mod:`fastlimit.core.results` names what steps answer.
"""
