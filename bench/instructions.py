"""Instruction counts of the hot path, for a host too noisy for wall time.

Run it under callgrind twice, with N calls and with none; the difference
divided by N is the instructions per call (the driver loop included).  Keep
numpy's BLAS to one thread: its pool's spinning adds noise.

    export OPENBLAS_NUM_THREADS=1
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/instructions.py allow 1000000      # and 0: / 1e6
    valgrind ... python bench/instructions.py hit_many 11   # and 1: per key, / 1e6

``--build DIR`` measures the fastlimit checked out (and built) in DIR.
"""

import argparse
import collections
import sys

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("what", choices=["allow", "hit_many"])
parser.add_argument("n", type=int, help="calls of allow, or batches of 100k keys for hit_many")
parser.add_argument("--build", help="a checkout to import fastlimit from")
args = parser.parse_args()
if args.build:
    sys.path.insert(0, args.build)

import numpy as np  # noqa: E402

import fastlimit  # noqa: E402

table = fastlimit.SharedTable.anonymous(200_000)
lim = fastlimit.Limiter("1000000000/1s", table, name="x")
if args.what == "allow":
    collections.deque(map(lim.allow, ["a", "b", "c", "d"] * (args.n // 4)), maxlen=0)
else:
    keys = np.arange(100_000, dtype=np.uint64)
    for _ in range(args.n):
        lim.hit_many(keys)
