"""Whether this process is one of several workers of one server (gunicorn,
``uvicorn --workers``, a multiprocessing pool): where a table of a process's
own (:meth:`SharedTable.anonymous`, made after the fork) gives each worker
limits of its own, N workers letting N times the limit through."""

from __future__ import annotations

import logging
import os
import re

from fastlimit.stores.table import SharedTable

__all__ = ["sibling_workers", "table_of_its_own", "warn_if_split"]

log = logging.getLogger("fastlimit")

_told: set[tuple[int, str]] = set()  # (pid, what): each process warns once of each


def sibling_workers() -> int:
    """How many other children of this process's parent run the program
    this one runs (read from ``/proc``; 0 when it cannot tell)."""
    me, parent = os.getpid(), os.getppid()
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            children = [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return 0
    mine = _program(me)
    if mine is None:
        return 0
    return sum(1 for pid in children if pid != me and _program(pid) == mine)


def _program(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return None
    # spawned workers' command lines differ only in numbers (their pipes' fds)
    return re.sub(rb"\d+", b"#", cmdline)


def warn_if_split(what: str, fix: str) -> bool:
    """Warn (once per process and ``what``) when ``what`` counts in a table
    of this process only while sibling workers run beside it; whether it
    warned."""
    key = (os.getpid(), what)
    if key in _told:
        return False
    _told.add(key)
    others = sibling_workers()
    if not others:
        return False
    log.warning(
        "fastlimit: %s counts in a table of this process only, while %d other workers of "
        "this server (children of pid %d running the same program) each count in their "
        "own: together they let up to %d times its limits through. %s",
        what, others, os.getppid(), others + 1, fix)
    return True


def table_of_its_own(what: str) -> SharedTable:
    """The anonymous table ``what`` (a limiter given no store) counts in,
    with the warning when sibling workers each make their own."""
    table = SharedTable.anonymous()
    warn_if_split(what, "Pass store=SharedTable.open(\"myapp\") (a named table every "
                        "worker opens), or make it before the server forks its workers.")
    return table
