"""What fastlimit needs of the system, checked when ``import fastlimit`` runs.

Named tables are files in ``/dev/shm`` (tmpfs; ``$FASTLIMIT_SHM_DIR`` moves
them), and a key's claim or a concurrency lease is freed when its holder is
gone from ``/proc`` (pid plus start time, read from ``/proc/<pid>/stat``).
Without them the table cannot keep its guarantees, so the import fails here,
naming what is missing, rather than later inside a check.  Linux is the one
supported platform (macOS and Windows have neither); there is no fallback.
"""

from __future__ import annotations

import os
import sys

PROC_STAT = "/proc/self/stat"
SHM_DIR = "/dev/shm"


class UnsupportedPlatformError(ImportError):
    """fastlimit cannot run here: the message says what is missing."""


def missing(
    platform: str = sys.platform, proc_stat: str = PROC_STAT, shm_dir: str | None = SHM_DIR
) -> list[str]:
    """What this system lacks, one phrase each (empty: all is there).

    ``shm_dir`` None skips the tmpfs check (``$FASTLIMIT_SHM_DIR`` names
    where tables go instead).

    >>> missing("linux", "/proc/self/stat", "/dev/shm")
    []
    >>> missing("darwin", "/nonexistent/stat", None)
    ['a Linux kernel (this is darwin)', '/proc (/nonexistent/stat is not readable)']
    """
    lacks = []
    if not platform.startswith("linux"):
        lacks.append(f"a Linux kernel (this is {platform})")
    if not os.access(proc_stat, os.R_OK):
        lacks.append(f"/proc ({proc_stat} is not readable)")
    if shm_dir is not None and not os.path.isdir(shm_dir):
        lacks.append(
            f"{shm_dir} (no such directory; set FASTLIMIT_SHM_DIR to a tmpfs "
            "directory to keep tables elsewhere)"
        )
    return lacks


def check() -> None:
    """Raise UnsupportedPlatformError unless this system has what fastlimit needs."""
    shm = None if os.environ.get("FASTLIMIT_SHM_DIR") else SHM_DIR
    lacks = missing(sys.platform, PROC_STAT, shm)
    if lacks:
        raise UnsupportedPlatformError(
            "fastlimit runs on Linux only: its tables live in shared memory (/dev/shm) and "
            "it tells live processes from dead ones in /proc; this system lacks "
            + "; ".join(lacks)
            + ".  Run it on a Linux host or in a Linux container "
            "(Docker Desktop runs one on macOS and Windows)."
        )
