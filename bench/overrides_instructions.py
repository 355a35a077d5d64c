"""Instruction counts of an override change, for a host too noisy for wall
time (see instructions.py): what one ``set()`` costs the writer and what
applying it costs a reader's next ``refresh()``, on files of ``--entries``
overrides (both in this process, each with its own ``Overrides``, as two
workers would be).

Run it under callgrind with N changes and with none; the difference
divided by N is the cost per change (the driver loop included):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/overrides_instructions.py set 2000        # and 0: / 2000
    valgrind ... python bench/overrides_instructions.py check 2000  # and 0: / 2000

``set`` makes the changes; ``check`` makes them with the reader's
``refresh()`` after each: ``check`` less ``set`` is the reader's cost of a
change.  ``--build DIR`` measures the fastlimit checked out (and built) in
DIR.  The changes stop short of a compaction (the journal's budget is
raised): its cost is in overrides_bench.py.
"""

import argparse
import os
import shutil
import sys
import tempfile

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("what", choices=["set", "check"])
parser.add_argument("n", type=int, help="changes")
parser.add_argument("--entries", type=int, default=20_000)
parser.add_argument("--build", help="a checkout to import fastlimit from")
args = parser.parse_args()
if args.build:
    sys.path.insert(0, args.build)

from fastlimit import Overrides  # noqa: E402
from fastlimit.policy import overrides as overrides_mod  # noqa: E402
from fastlimit.stores.table import shm_dir  # noqa: E402

overrides_mod.JOURNAL_MIN_BYTES = 64 << 20  # no compaction: min()'d to the hard cap

directory = tempfile.mkdtemp(prefix="fastlimit-overrides-instr.", dir=shm_dir())
try:
    path = os.path.join(directory, "overrides.json")
    writer = Overrides(path)
    writer.update({("token", f"tok_{i}"): f"{i % 500 + 1}/1h" for i in range(args.entries)})
    reader = Overrides(path)
    # the changes' texts made before, so the loop is the changes alone
    changes = [(f"tok_{(k * 7919) % args.entries}" if k % 2 else f"new_{k}", f"{k % 900 + 1}/1m")
               for k in range(args.n)]
    for r in range(900):  # every rate parsed once, in both runs alike
        overrides_mod._checked("token", "x", f"{r + 1}/1m")
    if args.what == "set":
        for subject, rate in changes:
            writer.set("token", subject, rate)
    else:
        refresh = reader.refresh
        for subject, rate in changes:
            writer.set("token", subject, rate)
            refresh()
    assert len(reader) == len(writer) or args.what == "set"
    writer.close()
    reader.close()
finally:
    shutil.rmtree(directory)
