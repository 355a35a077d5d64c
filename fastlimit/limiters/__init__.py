"""Limiters: one limit applied to every key, over a store.

:class:`~fastlimit.Limiter` (a GCRA rate), :class:`~fastlimit.Quota` (a
calendar allowance), :class:`~fastlimit.ConcurrencyLimit` (leases in
flight), several limits checked as one (:mod:`.composite`), and waiting for
a limit in turn (:mod:`.waiting`, :mod:`.progress`).  Rates and their
parser are in :mod:`.rate`.
"""
