# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True, binding=False
"""fastlimit's compiled core: GCRA over a lock-free hash table in shared memory.

The core knows integers: key fingerprints, nanosecond times, the emission
interval, the burst and the cost.  The Python facade (the stores and the
limiters) owns files, headers, rates and clock policy; fastlimit/core/gcra.py
states the arithmetic this file implements.

It reads as parts, one per concern, included below from fastlimit/core/:
the C it is built on, process liveness, the slots and their claim protocol,
metrics and the table view, keys, GCRA, quotas and leases.

Table layout (the header page itself is described in stores/table.py):

* slots are ``{uint64 fp, int64 tat}`` (16 bytes); a bucket is 8 slots, 128
  bytes, aligned so that it spans one pair of cache lines;
* a key's fingerprint ``fp`` is SipHash-1-3 of the key under a 128-bit key
  derived from the table's random secret and the limiter's name; ``fp`` is
  never 0;
* a key lives in one of two buckets chosen by the low and high halves of
  ``fp``; a new key goes to the bucket with fewer live entries.

The ``tat`` word of a slot says who owns it:

* ``tat >= 0``: the slot is the state of key ``fp``; ``tat <= now`` means the
  key is fresh, so the slot may be reclaimed by any key;
* ``tat == FREE``: the slot is free whatever ``fp`` says;
* ``tat == LOCK | owner``: a claim is in flight by the process ``owner``
  (pid and start time).

See ``_claim`` for the protocol and its crash-safety argument.
"""

from libc.stdint cimport int64_t, uint32_t, uint64_t, INT64_MAX
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_Check
from cpython.long cimport PyLong_Check, PyLong_AsLongLongAndOverflow
from cpython.unicode cimport PyUnicode_Check
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
cimport cython

import operator
import os

import numpy as np

cimport numpy as cnp

cnp.import_array()

from fastlimit.core.gcra import MAX_CLOCK_NS, MAX_TOLERANCE_NS, check_params
from fastlimit.core.results import Acquired, Step
from fastlimit.errors import CapacityError, TableFullError

# results as the names callers compare with: Step by result + 2, Acquired by -code - 1
cdef tuple _STEPS = (Step.STALLED, Step.NO_SLOT, Step.DENIED, Step.ALLOWED)
cdef tuple _ACQUIRED = (Acquired.REFUSED, Acquired.UNRECORDED)

include "core/platform.pxi"
include "core/liveness.pxi"
include "core/slots.pxi"
include "core/metrics.pxi"
include "core/keys.pxi"
include "core/gcra.pxi"
include "core/quotas.pxi"
include "core/leases.pxi"
