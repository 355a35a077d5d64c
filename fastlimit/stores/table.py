"""SharedTable: the memory-mapped segment that holds every limiter's state.

A table is one file (by default ``/dev/shm/fastlimit.<name>``) holding a
4 KiB header page and then buckets of slots.  Any process that opens the same
name shares the same state: workers forked from one parent, processes started
with ``spawn``, or unrelated programs.  The file is created with mode 0600 and
is only ever removed by :meth:`SharedTable.unlink`: nothing unlinks it behind
your back when a process exits (unlike ``multiprocessing.shared_memory``).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import logging
import mmap
import os
import re
import stat
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fastlimit import _core
from fastlimit.errors import ConfigurationError, TableError
from fastlimit.stores.contract import Kind as StateKind
from fastlimit.stores.contract import on_full_code

__all__ = ["DEFAULT_CAPACITY", "LimiterStats", "SharedTable", "TableStats", "anonymous_path",
           "beside", "check_owner", "check_removable", "mapped_by", "overrides_path",
           "quotas_path", "shm_dir", "state_dir", "table_path"]

log = logging.getLogger("fastlimit")

MAGIC = b"FLTABLE1"
LAYOUT_VERSION = 3
HEADER_BYTES = 4096
SLOT_BYTES = 16
BUCKET_SLOTS = 8
BUCKET_BYTES = SLOT_BYTES * BUCKET_SLOTS
# What a table's words mean, stored as its header's clock id: "rates" hold
# CLOCK_MONOTONIC times (GCRA tats, and leases); "quotas" hold calendar
# period counts.  A table holds one kind: each kind's notion of an expired
# slot would misread the other's words.
KINDS = {"rates": 1, "quotas": 2}
Kind = Literal["rates", "quotas"]
_STATE_KINDS: dict[str, frozenset[StateKind]] = {
    "rates": frozenset({"rate", "concurrency"}), "quotas": frozenset({"quota"})}
DEFAULT_CAPACITY = 65_536
MAX_CAPACITY = 1_000_000_000
# Slots per key, as a fraction: 23/16 = 1.4375 slots (23 bytes) per key of
# capacity.  With two bucket choices of 8 slots, a table filled to capacity
# finds a full pair for about one new key in a million (simulated).
_SLOTS_PER_KEY = (23, 16)
_LOCK_BITS = -(1 << 62)  # 0xC000... as int64
_FREE = -(1 << 63)

SLOT_DTYPE = np.dtype([("fp", "<u8"), ("tat", "<i8")])

# The metrics area, between the header page and the slots: a registry of
# limiter names, then one stripe of counters per process (see _core.pyx,
# "metrics").  Entry 0 of the registry gathers names that found it full.
METRICS_LIMITERS = 128
METRICS_STRIPES = 64
METRIC_KINDS = {1: "rate", 2: "quota", 3: "concurrency"}
METRIC_MIXED = 0x100  # flag in a registry entry's kind
REGISTRY_DTYPE = np.dtype(
    {
        "names": ["id", "kind", "name_len", "p1", "p2", "name"],
        "formats": ["<u8", "<u4", "<u4", "<i8", "<i8", "S96"],
        "offsets": [0, 8, 12, 16, 24, 32],
        "itemsize": 128,
    }
)
_STRIPE_BYTES = _core.metrics_stripe_bytes(METRICS_LIMITERS)
STRIPE_DTYPE = np.dtype(
    {
        "names": ["owner", "counts"],  # counts: (no slot, denied, allowed) per entry
        "formats": ["<i8", ("<u8", (METRICS_LIMITERS, 3))],
        "offsets": [0, 64],
        "itemsize": _STRIPE_BYTES,
    }
)
METRICS_BYTES = METRICS_LIMITERS * REGISTRY_DTYPE.itemsize + METRICS_STRIPES * _STRIPE_BYTES
SLOTS_OFFSET = -(-(HEADER_BYTES + METRICS_BYTES) // 4096) * 4096
# The counters live on their own cache line (offset 128): processes bump them
# on rare events only, and must not bounce the line that holds the layout.
COUNTERS = ("full_events", "lock_breaks", "lock_timeouts", "evictions")  # order known to _core
COUNTERS_OFFSET = 128
# The header's fixed fields (the first CHECKED_BYTES) carry a CRC-32: a
# flipped byte of the secret would otherwise silently move every key.  The
# namespaces are the creator's PID and time namespaces (device and inode of
# /proc/self/ns/pid and /proc/self/ns/time; 0: unknown): liveness is read in
# /proc and times on CLOCK_MONOTONIC, so every user must share both.  The
# clock word is settled by the first limiter (CLOCKS), after the checksum.
CHECKED_BYTES = 112
CLOCK_OFFSET = 112
CLOCKS = {"monotonic": 1, "injected": 2}
_CLOCK_TEXT = {"monotonic": "CLOCK_MONOTONIC", "injected": "an injected clock"}
Clock = Literal["monotonic", "injected"]
# Clocks given by hand that are CLOCK_MONOTONIC itself, as the core reads it.
_MONOTONIC = (time.monotonic_ns, _core.monotonic_ns)
HEADER_DTYPE = np.dtype(
    {
        "names": [
            "magic", "version", "header_size", "slot_size", "bucket_slots",
            "capacity", "nbuckets", "clock_id", "flags", "secret", "boot_id",
            "created_ns", "metrics_limiters", "metrics_stripes", "pid_ns", "time_ns",
            "clock", "checksum", *COUNTERS,
        ],
        "formats": [
            "S8", "<u4", "<u4", "<u4", "<u4", "<u8", "<u8", "<u4", "<u4",
            ("<u8", (2,)), "S16", "<i8", "<u4", "<u4", "<u8", "<u8", "<i8", "<u4",
            "<u8", "<u8", "<u8", "<u8",
        ],
        "offsets": [0, 8, 12, 16, 20, 24, 32, 40, 44, 48, 64, 80, 88, 92, 96, 104, 112, 120,
                    128, 136, 144, 152],
        "itemsize": HEADER_BYTES,
    }
)

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
OnFull = Literal["deny", "allow", "raise", "evict"]
def anonymous_path(path: str) -> str:
    """The file of the table beside ``path`` where a policy's per-IP keys
    count (the anonymous callers' class): ``<path>.anonymous``, the table
    named ``<name>.anonymous`` for a named one."""
    return f"{path}.anonymous"


def overrides_path(path: str, policy: str) -> str:
    """Where policy ``policy`` on the table at ``path`` keeps its run-time
    overrides by default: ``<path>.<policy>.overrides.json``, one file per
    (table, policy), so two policies never share one by accident."""
    return f"{path}.{_file_part(policy)}.overrides.json"


def quotas_path(path: str | None, policy: str) -> str | None:
    """Where policy ``policy`` on the table at ``path`` counts its quotas by
    default: ``state_dir()/<table>.<policy>.quotas.tbl`` (on disk, kept
    across reboots), one file per (table, policy); None for a table with
    no file (its quotas count in memory, as its rates do)."""
    if path is None:
        return None
    name = os.path.basename(path)
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(shm_dir()):
        # a table of the same name elsewhere is another table
        name += "-" + hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:10]
    return os.path.join(state_dir(), f"{name}.{_file_part(policy)}.quotas.tbl")


def beside(path: str) -> list[str]:
    """The files policies keep beside the table at ``path`` that exist: its
    per-IP twin (:func:`anonymous_path`) and every policy's overrides (the
    snapshot, its counter and journal).  They go when the table goes."""
    found = [p for p in (anonymous_path(path),) if os.path.exists(p)]
    found += sorted(glob.glob(f"{glob.escape(path)}.*overrides.json*"))
    return found


def _file_part(name: str) -> str:
    """``name`` (a policy name: printable ASCII) as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


def shm_dir() -> str:
    """Where named tables live: ``$FASTLIMIT_SHM_DIR`` or ``/dev/shm``."""
    return os.environ.get("FASTLIMIT_SHM_DIR", "/dev/shm")


def state_dir() -> str:
    """Where quota files live by default: ``$FASTLIMIT_STATE_DIR``, else
    ``$XDG_STATE_HOME/fastlimit``, else ``~/.local/state/fastlimit``."""
    if "FASTLIMIT_STATE_DIR" in os.environ:
        return os.environ["FASTLIMIT_STATE_DIR"]
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "fastlimit")


def nbuckets_for(capacity: int) -> int:
    num, den = _SLOTS_PER_KEY
    return max(1, -(-capacity * num // (den * BUCKET_SLOTS)))


def _boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return bytes.fromhex(f.read().strip().replace("-", ""))
    except OSError:  # no /proc: treat every boot as the same one
        return b"\0" * 16


def _namespace(kind: str) -> int:
    """This process's namespace of ``kind`` ("pid", "time"): the device and
    inode numbers of ``/proc/self/ns/<kind>`` (what tell namespaces apart),
    as ``dev << 32 | ino``; 0 where the kernel does not tell."""
    try:
        st = os.stat(f"/proc/self/ns/{kind}")
    except OSError:
        return 0
    return (st.st_dev & 0xFFFFFFFF) << 32 | (st.st_ino & 0xFFFFFFFF)


def _namespace_text(kind: str, value: int) -> str:
    """A namespace as ``ls -l /proc/self/ns`` shows it (with its device)."""
    return f"{kind}:[{value & 0xFFFFFFFF}] (device {value >> 32})"


def _checksum(raw: bytes) -> int:
    return zlib.crc32(raw[:CHECKED_BYTES])


def _sealed(header: np.ndarray) -> np.ndarray:
    header["checksum"] = _checksum(header.tobytes())
    return header


def _check_namespaces(header: np.ndarray, path: str, kind: str) -> None:
    """Refuse a table made in another PID namespace (its lease holders and
    claimers would look dead here) or, for rates, another time namespace
    (its times would be read on another CLOCK_MONOTONIC)."""
    for ns, field, needed, remedy in (
            ("pid", "pid_ns", True,
             "run every process of the table in one PID namespace (Kubernetes: "
             "shareProcessNamespace: true in the pod; docker: --pid=container:<id> or "
             "--pid=host)"),
            ("time", "time_ns", kind == "rates",
             "run every process of the table in one time namespace")):
        theirs, mine = int(header[field]), _namespace(ns)
        if needed and theirs and mine and theirs != mine:
            raise TableError(
                f"table {path} was made in {ns} namespace {_namespace_text(ns, theirs)}, and "
                f"this process is in {_namespace_text(ns, mine)}: its state cannot be shared "
                f"from here; {remedy}, or use a table of this namespace's own")


def _table_on_full(on_full: object, kind: str) -> bool:
    """Check a table's ``on_full``; whether it is "evict"."""
    if on_full != "evict":
        on_full_code(on_full)
        return False
    if kind != "rates":
        raise ConfigurationError(
            f"on_full='evict' is for tables of rates; a table of {kind} counts what callers "
            f"used, and forgetting it would hand it back")
    return True


def _check_capacity(capacity: Any) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise ConfigurationError(f"capacity must be an int, got {capacity!r}")
    if not 1 <= capacity <= MAX_CAPACITY:
        raise ConfigurationError(f"capacity must be between 1 and {MAX_CAPACITY}, got {capacity}")
    return capacity


def _new_header(capacity: int, kind: Kind) -> np.ndarray:
    h = np.zeros(1, HEADER_DTYPE)
    h["version"] = LAYOUT_VERSION
    h["header_size"] = HEADER_BYTES
    h["slot_size"] = SLOT_BYTES
    h["bucket_slots"] = BUCKET_SLOTS
    h["capacity"] = capacity
    h["nbuckets"] = nbuckets_for(capacity)
    h["clock_id"] = KINDS[kind]
    h["secret"] = np.frombuffer(os.urandom(16), "<u8")
    h["boot_id"] = _boot_id()
    h["created_ns"] = time.time_ns()
    h["metrics_limiters"] = METRICS_LIMITERS
    h["metrics_stripes"] = METRICS_STRIPES
    h["pid_ns"] = _namespace("pid")
    h["time_ns"] = _namespace("time")
    h["magic"] = MAGIC
    return _sealed(h)


def _segment_bytes(nbuckets: int) -> int:
    return SLOTS_OFFSET + nbuckets * BUCKET_BYTES


@dataclass(frozen=True)
class LimiterStats:
    """Checks counted for one limiter (or quota, or concurrency limit) of a
    table, summed over every process that used it since the table was made.

    ``full`` counts checks of new keys that found no free slot (answered by
    ``on_full``); ``allowed`` and ``denied`` count the others.  Parameters are
    those the latest user of the name stated: ``emission_interval_ns`` and
    ``burst`` for rates, ``limit`` for quotas (0 where they do not apply);
    ``mixed`` says users stated different ones (a policy's bucket used at
    several tiers' rates, say).
    """

    name: str
    kind: str
    allowed: int
    denied: int
    full: int
    emission_interval_ns: int = 0
    burst: int = 0
    limit: int = 0
    mixed: bool = False

    @property
    def checks(self) -> int:
        return self.allowed + self.denied + self.full


@dataclass(frozen=True)
class TableStats:
    """A snapshot of a table, computed from its numpy view.

    ``live_keys`` counts keys whose state is not yet fully replenished;
    ``locked_slots`` counts claims in flight (or left by a killed process,
    reclaimed by the next process that needs them).
    """

    capacity: int
    slots: int
    live_keys: int
    locked_slots: int
    full_events: int
    lock_breaks: int
    lock_timeouts: int
    nbytes: int
    evictions: int = 0
    limiters: tuple[LimiterStats, ...] = ()

    @property
    def bytes_per_key(self) -> float:
        """Bytes of slots per key of capacity (the header and metrics areas
        add a fixed ``SLOTS_OFFSET`` bytes, about 212 KiB, per table)."""
        return self.slots * SLOT_BYTES / self.capacity

    @property
    def occupancy(self) -> float:
        """Live keys per key of capacity."""
        return self.live_keys / self.capacity


class SharedTable:
    """GCRA state shared by every process that opens the same table.

    Create or attach with :meth:`open`; :meth:`create` and :meth:`attach`
    insist on one or the other; :meth:`anonymous` makes a table shared only
    with forked children.

    Example:
        >>> table = SharedTable.anonymous(capacity=1000)
        >>> table.stats().capacity
        1000
        >>> table.close()
    """

    def __init__(self, mm: mmap.mmap, path: str | None, on_full: OnFull = "deny") -> None:
        # Use open/create/attach/anonymous; this only wraps a mapped segment.
        self._kind: Kind = _kind_of(int(np.frombuffer(mm, HEADER_DTYPE, count=1)["clock_id"][0]))
        evict = _table_on_full(on_full, self._kind)
        # evicting is the table's (its mapping's) choice; a limiter's own
        # on_full answers when even that finds no slot (all leases)
        self._on_full = on_full_code("deny" if evict else on_full)
        self._on_full_name = on_full
        self._mm: mmap.mmap | None = mm
        self._path = path
        header = np.frombuffer(mm, HEADER_DTYPE, count=1)
        self._header: np.ndarray | None = header
        self._capacity = int(header["capacity"][0])
        self._nbuckets = int(header["nbuckets"][0])
        secret = header["secret"][0]
        self._slots: np.ndarray | None = np.frombuffer(
            mm, SLOT_DTYPE, count=self._nbuckets * BUCKET_SLOTS, offset=SLOTS_OFFSET)
        self._registry: np.ndarray | None = np.frombuffer(
            mm, REGISTRY_DTYPE, count=METRICS_LIMITERS, offset=HEADER_BYTES)
        self._stripes: np.ndarray | None = np.frombuffer(
            mm, STRIPE_DTYPE, count=METRICS_STRIPES,
            offset=HEADER_BYTES + METRICS_LIMITERS * REGISTRY_DTYPE.itemsize)
        self._view = _core.TableView(
            mm, SLOTS_OFFSET, self._nbuckets, COUNTERS_OFFSET, int(secret[0]), int(secret[1]),
            HEADER_BYTES, METRICS_LIMITERS, METRICS_STRIPES)
        if evict:
            _core.set_evict(self._view, True)

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    def open(
        cls,
        name: str | None = None,
        capacity: int | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        on_full: OnFull = "deny",
        kind: Kind = "rates",
        clock: Clock | None = None,
    ) -> SharedTable:
        """Attach to the table ``name``, creating it if it does not exist.

        Safe when many processes call it at once: exactly one creates the
        table, the rest attach to it.

        Args:
            name: the table's name (letters, digits, ``_.-``); the file is
                ``$FASTLIMIT_SHM_DIR/fastlimit.<name>`` (``/dev/shm`` by default).
            capacity: keys the table must hold; default 65,536 (23 bytes per
                key).  When attaching, a different capacity is an error.
            path: a file to use instead of a name (e.g. on disk).
            on_full: what a new key gets when its buckets are full of live
                keys: ``"deny"``, ``"allow"`` or ``"raise"`` (TableFullError);
                or, for a table of keys it is safer to forget than to refuse
                (a policy's per-IP keys), ``"evict"``: the live rate key
                due soonest in those buckets is forgotten and the new key
                takes its slot (counted in ``stats().evictions``; leases are
                never evicted).
            kind: ``"rates"`` (limiters and concurrency leases, on
                CLOCK_MONOTONIC, cleared after a reboot) or ``"quotas"``
                (calendar counts, kept across reboots).  Attaching checks it.
            clock: the one clock every limiter of the table must run on:
                ``"monotonic"`` (CLOCK_MONOTONIC, the default clock) or
                ``"injected"`` (a clock given to the limiters: tests'
                FakeClock).  None: the first limiter's settles it.  Either
                way a limiter on the other is refused (see :attr:`clock`).

        Raises:
            TableError: the file is not a compatible fastlimit table, its
                capacity differs, or there is no space for it.
        """
        return cls._open(table_path(name, path), capacity, "open", on_full, kind, clock)

    @classmethod
    def create(
        cls,
        name: str | None = None,
        capacity: int = DEFAULT_CAPACITY,
        *,
        path: str | os.PathLike[str] | None = None,
        on_full: OnFull = "deny",
        kind: Kind = "rates",
        clock: Clock | None = None,
    ) -> SharedTable:
        """Create the table ``name``; fails if it already exists."""
        return cls._open(table_path(name, path), capacity, "create", on_full, kind, clock)

    @classmethod
    def attach(
        cls,
        name: str | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        capacity: int | None = None,
        on_full: OnFull = "deny",
        kind: Kind | None = None,
        clock: Clock | None = None,
    ) -> SharedTable:
        """Attach to the existing table ``name``; fails if there is none
        (or, when ``kind`` or ``clock`` is given, if it holds another kind
        or runs on another clock)."""
        return cls._open(table_path(name, path), capacity, "attach", on_full, kind, clock)

    @classmethod
    def anonymous(
        cls, capacity: int = DEFAULT_CAPACITY, *, on_full: OnFull = "deny", kind: Kind = "rates",
        clock: Clock | None = None,
    ) -> SharedTable:
        """A table with no name, shared with processes forked after this call."""
        capacity = _check_capacity(capacity)
        _kind_id(kind)
        _check_clock_name(clock)
        header = _new_header(capacity, kind)
        mm = mmap.mmap(-1, _segment_bytes(int(header["nbuckets"][0])))
        mm[:HEADER_BYTES] = header.tobytes()
        mm[:len(MAGIC)] = MAGIC
        return cls(mm, None, on_full)._pinned(clock)

    @classmethod
    def _open(
        cls, path: str, capacity: int | None, mode: str, on_full: OnFull, kind: Kind | None,
        clock: Clock | None = None,
    ) -> SharedTable:
        _table_on_full(on_full, kind or "rates")
        _check_clock_name(clock)
        if kind is not None:
            _kind_id(kind)
        if capacity is not None:
            capacity = _check_capacity(capacity)
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        if mode != "attach":
            flags |= os.O_CREAT
        if mode == "create":
            flags |= os.O_EXCL
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise TableError(f"table {path} already exists: attach to it or unlink it") from None
        except FileNotFoundError:
            if mode == "attach":
                raise TableError(
                    f"no table at {path}: create it first with SharedTable.open"
                    f"(name, capacity=...)") from None
            raise TableError(f"cannot create {path}: its directory does not exist") from None
        except PermissionError as e:
            raise TableError(f"cannot open table {path}: {e.strerror}") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise TableError(
                    f"cannot open table {path}: it is a symbolic link, and tables are "
                    f"never opened through one (name the file itself)") from None
            raise TableError(f"cannot open table {path}: {e.strerror}") from None
        try:
            # Before the lock: a file someone else planted may be locked by them.
            check_owner(fd, path)
            # The lock makes create-or-attach atomic, and dies with its holder.
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = _prepare(fd, path, capacity, mode, kind)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            # mmap keeps a dup of fd, which shares the lock: release it by hand
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return cls(mm, path, on_full)._pinned(clock)

    def _pinned(self, clock: Clock | None) -> SharedTable:
        """This table, its clock settled to ``clock`` (if given)."""
        if clock is None:
            return self
        have = self._pin_clock(clock)
        if have is not None:
            self.close()
            raise TableError(
                f"table {self._path or '(anonymous)'} runs on {_CLOCK_TEXT[have]}, not on "
                f"{_CLOCK_TEXT[clock]}: its limiters' times are on that clock.  Open it "
                f"with clock={have!r} (or None), or use a table of its own")
        return self

    def close(self) -> None:
        """Unmap the table in this process.  Limiters on it raise afterwards;
        the table itself and other processes are untouched."""
        if self._mm is None:
            return
        self._view.release()
        self._header = self._slots = self._registry = self._stripes = None
        try:
            self._mm.close()
        except BufferError:
            pass  # numpy views handed out still pin the mapping; it goes with them
        self._mm = None

    def unlink(self) -> None:
        """Remove the table's file and what policies keep beside it (its
        per-IP twin and their overrides, :func:`beside`): a new table of the
        name inherits nothing.  Processes that have them mapped keep using
        them; the next :meth:`open` of the name makes a new, empty table."""
        if self._path is not None:
            for path in (self._path, *beside(self._path)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    def clear(self) -> int:
        """Forget every key's state (GCRA times, quota counts): each key
        starts afresh.  Concurrency leases in flight are kept (their holders
        give them back).  A check that runs in another process while the
        table is cleared may keep what it writes.  Returns how many keys were
        forgotten.

        Example:
            >>> from fastlimit import Limiter
            >>> table = SharedTable.anonymous(capacity=100)
            >>> limiter = Limiter("1/1h", table)
            >>> limiter.hit("k").allowed, limiter.hit("k").allowed
            (True, False)
            >>> table.clear(), limiter.hit("k").allowed
            (1, True)
        """
        slots = self.slots
        tat = slots["tat"]
        # a key's (fingerprints are never 0, as in a slot never used) and
        # neither top bit: a time or a count (freed slots have bit 63 set,
        # leases bit 62, claims in flight both)
        held = (tat & _LOCK_BITS) == 0
        held &= slots["fp"] != 0
        n = int(np.count_nonzero(held))
        tat[held] = _FREE
        return n

    def __enter__(self) -> SharedTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        if self._path is None:
            raise TypeError(
                "an anonymous table is shared only with forked processes; open a "
                "named table to send it to a spawned process")
        return (_attach_path, (self._path, self._on_full_name, self._kind))

    def __repr__(self) -> str:
        where = self._path or "anonymous"
        state = "closed" if self.closed else f"capacity={self._capacity}"
        return f"<SharedTable {where} {state}>"

    # -- inspection ----------------------------------------------------------

    @property
    def path(self) -> str | None:
        return self._path

    @property
    def name(self) -> str:
        """The name the table was opened by (its path if opened by path;
        ``"anonymous"`` if it has none): what metrics label it with."""
        if self._path is None:
            return "anonymous"
        base = os.path.basename(self._path)
        prefix = "fastlimit."
        if os.path.dirname(self._path) == shm_dir() and base.startswith(prefix):
            return base[len(prefix):]
        return self._path

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def on_full(self) -> OnFull:
        return self._on_full_name

    @property
    def closed(self) -> bool:
        return self._mm is None

    @property
    def nbytes(self) -> int:
        return _segment_bytes(self._nbuckets)

    @property
    def slots(self) -> np.ndarray:
        """The slots as a numpy structured array (fields ``fp``, ``tat``).

        A live view: values change as processes hit the table."""
        return self._require(self._slots)

    @property
    def header(self) -> np.ndarray:
        """The header page as a numpy record (layout, secret, counters)."""
        record: np.ndarray = self._require(self._header)[0]
        return record

    def _require(self, array: np.ndarray | None) -> np.ndarray:
        if array is None:
            raise ValueError("table is closed")
        return array

    def stats(self, now_ns: int | None = None) -> TableStats:
        """Capacity, live keys, locked slots and event counters.

        ``now_ns`` defaults to CLOCK_MONOTONIC; pass your clock's time when
        the limiters use an injected clock.

        Raises:
            TableError: the table's file was truncated (reading its slots
                would kill this process with SIGBUS).
        """
        shrunk = self._shrunk()
        if shrunk:
            raise TableError(shrunk)
        tat = self.slots["tat"]
        now = time.monotonic_ns() if now_ns is None else now_ns
        header = self.header
        return TableStats(
            capacity=self._capacity,
            slots=len(tat),
            live_keys=int(np.count_nonzero(tat > now)),
            locked_slots=int(np.count_nonzero((tat & _LOCK_BITS) == _LOCK_BITS)),
            full_events=int(header["full_events"]),
            lock_breaks=int(header["lock_breaks"]),
            lock_timeouts=int(header["lock_timeouts"]),
            evictions=int(header["evictions"]),
            nbytes=self.nbytes,
            limiters=self.limiter_stats(),
        )

    def _shrunk(self) -> str | None:
        """What is wrong if the mapped file is now shorter than the mapping
        (someone truncated it): touching a lost page is a SIGBUS.  One fstat
        of the mapped file (not the path, which may name a newer table): for
        stats and verify, never the checks of keys."""
        mm = self._mm
        if mm is None or self._path is None:
            return None
        try:
            size = mm.size()  # fstat of the file mmap keeps open
        except OSError:
            return None
        if size >= len(mm):
            return None
        return (f"table {self._path} was truncated to {size} bytes of {len(mm)}: processes "
                f"that map it die with SIGBUS when they touch the lost pages.  Stop them, "
                f"remove it (`fastlimit rm {self.name} --force`) and let it be made again")

    def limiter_stats(self) -> tuple[LimiterStats, ...]:
        """Checks per limiter name, summed over every process's stripe;
        sorted by name, then kind, with ``"(other)"`` (names that found the
        registry full) last."""
        registry = self._require(self._registry).copy()
        counts = self._require(self._stripes)["counts"].sum(axis=0, dtype=np.uint64).tolist()
        out, other = [], []
        full, denied, allowed = counts[0]
        if full or denied or allowed:
            other.append(LimiterStats("(other)", "", allowed, denied, full))
        for i in np.flatnonzero(registry["id"][1:]) + 1:
            entry = registry[i]
            full, denied, allowed = counts[i]
            kind = METRIC_KINDS.get(int(entry["kind"]) & 0xFF, "")
            p1, p2 = int(entry["p1"]), int(entry["p2"])
            name = bytes(entry["name"])[: int(entry["name_len"])].decode("utf-8", "replace")
            out.append(LimiterStats(
                name, kind, allowed, denied, full,
                emission_interval_ns=p1 if kind == "rate" else 0,
                burst=p2 if kind == "rate" else 0,
                limit=p1 if kind == "quota" else 0,
                mixed=bool(int(entry["kind"]) & METRIC_MIXED)))
        out.sort(key=lambda s: (s.name, s.kind))
        return (*out, *other)

    def verify(self) -> list[str]:
        """Check the table's invariants; returns the problems found (none: []).

        Every committed slot must name a key (fp != 0), sit in one of its
        key's two buckets, and be the only committed slot of that key; the
        file must still be its full size (a truncated one would kill the
        processes that touch its lost pages with SIGBUS: it is reported
        here, before any slot is read).
        """
        shrunk = self._shrunk()
        if shrunk:
            return [shrunk]
        slots = self.slots.copy()  # one snapshot, so the checks agree
        fp, tat = slots["fp"], slots["tat"]
        problems: list[str] = []
        committed = tat >= 0
        orphans = np.nonzero(committed & (fp == 0) & (tat != 0))[0]
        problems += [f"slot {i} holds state (tat={tat[i]}) but no key" for i in orphans[:10]]
        index = np.nonzero(committed & (fp != 0))[0]
        keys = fp[index]
        values, counts = np.unique(keys, return_counts=True)
        problems += [f"key fingerprint {v:#018x} owns {c} slots" for v, c in
                     zip(values[counts > 1][:10], counts[counts > 1][:10], strict=True)]
        nb = np.uint64(self._nbuckets)
        b1 = ((keys & np.uint64(0xFFFFFFFF)) * nb) >> np.uint64(32)
        b2 = ((keys >> np.uint64(32)) * nb) >> np.uint64(32)
        bucket = (index // BUCKET_SLOTS).astype(np.uint64)
        misplaced = index[(bucket != b1) & (bucket != b2)]
        problems += [f"slot {i} is outside its key's buckets" for i in misplaced[:10]]
        return problems

    def _word(self, fp: int) -> int:
        """The committed state word of fingerprint ``fp`` (0 if it has none):
        for tools that show a key's raw state."""
        slots = self.slots
        nb = self._nbuckets
        for b in (((fp & 0xFFFFFFFF) * nb) >> 32, ((fp >> 32) * nb) >> 32):
            bucket = slots[b * BUCKET_SLOTS:(b + 1) * BUCKET_SLOTS]
            hit = np.nonzero((bucket["fp"] == np.uint64(fp)) & (bucket["tat"] >= 0))[0]
            if len(hit):
                return int(bucket["tat"][hit[0]])
        return 0

    # -- the store contract (fastlimit.stores.contract) ------------------------

    @property
    def kind(self) -> Kind:
        """``"rates"`` or ``"quotas"``: what the table was made to hold."""
        return self._kind

    @property
    def kinds(self) -> frozenset[StateKind]:
        """The kinds of state it holds: rates and leases, or quota counts."""
        return _STATE_KINDS[self._kind]

    def _user(self, kind: Kind, what: str, on_full: OnFull | None) -> int:
        if self.closed:
            raise ValueError("table is closed")
        if self._kind != kind:
            raise ConfigurationError(
                f"{what} needs a table of kind {kind!r}; {self._path or 'this table'} holds "
                f"{self._kind}")
        return self._on_full if on_full is None else on_full_code(on_full)

    def rate_state(
        self,
        name: str,
        emission_interval_ns: int,
        burst: int,
        *,
        clock: Callable[[], int] | None = None,
        on_full: OnFull | None = None,
        register: bool = True,
    ) -> _core.Gcra:
        """GCRA state of the limiter ``name`` (see the store contract)."""
        # register=False: a tool looking at a limiter (fastlimit inspect)
        # must not restate its parameters in the metrics registry
        code = self._user("rates", "a Limiter", on_full)
        state = _core.Gcra(self._view, name, emission_interval_ns, burst, clock, code, register)
        self._settle_clock(clock, name)  # after the checks of the limiter's parameters
        return state

    @property
    def clock(self) -> str | None:
        """The clock its rates run on: ``"monotonic"`` (CLOCK_MONOTONIC, read
        in C), ``"injected"`` (a clock given to the limiters, e.g. a
        FakeClock), or None before its first limiter."""
        value = int(self._require(self._header)["clock"][0])
        return next((name for name, v in CLOCKS.items() if v == value), None)

    def _settle_clock(self, clock: Callable[[], int] | None, name: str) -> None:
        """One table, one clock: the first limiter's settles it (a word set
        once, by compare-and-swap); a limiter on another clock is refused,
        since its times would read as far past or future to the others."""
        if self._mm is None:
            raise ValueError("table is closed")
        wanted = "monotonic" if clock is None or any(clock is m for m in _MONOTONIC) \
            else "injected"
        have = self._pin_clock(wanted)
        if have is None:
            return
        raise ConfigurationError(
            f"limiter {name!r} runs on {_CLOCK_TEXT[wanted]}, but table "
            f"{self._path or '(anonymous)'} runs on {_CLOCK_TEXT[have]}: every limiter of a "
            f"table must share its clock (times on another read as far past or future). "
            f"Give the limiter clock=None here, or a table of its own for an injected clock "
            f"(e.g. SharedTable.anonymous()); clock={clock!r}")

    def _pin_clock(self, wanted: str) -> str | None:
        """Settle the table's clock to ``wanted`` unless it is settled;
        None if it is now ``wanted``, else the clock it runs on."""
        if self._mm is None:
            raise ValueError("table is closed")
        seen = _core.header_cas(self._mm, CLOCK_OFFSET, 0, CLOCKS[wanted])
        if seen in (0, CLOCKS[wanted]):
            return None
        return "injected" if wanted == "monotonic" else "monotonic"

    def quota_counts(
        self, name: str, limit: int, *, on_full: OnFull | None = None, register: bool = True
    ) -> _core.QuotaCounter:
        """Calendar counts of the quota ``name`` (a table of kind "quotas")."""
        code = self._user("quotas", "a Quota", on_full)
        return _core.QuotaCounter(self._view, name, limit, code, register)

    def lease_slots(self, name: str, *, on_full: OnFull | None = None,
                    clock: Callable[[], int] | None = None) -> _core.Leases:
        """Leases in flight of the concurrency limit ``name``."""
        # On the table a lease ends with its holder's process (seen in /proc),
        # never with time (stores whose leases expire read the clock), so a
        # limit on the default clock leaves the table's unsettled; one given
        # a clock (for its acquire timeouts) must run on the table's.
        code = self._user("rates", "a ConcurrencyLimit", on_full)
        leases = _core.Leases(self._view, name, code)
        if clock is not None:
            self._settle_clock(clock, name)
        return leases

    def flush(self) -> None:
        """Write the table's pages to its file now (quota tables on disk);
        the kernel does so on its own within seconds otherwise."""
        if self._mm is not None:
            self._mm.flush()


def _attach_path(path: str, on_full: OnFull, kind: Kind = "rates") -> SharedTable:
    return SharedTable.attach(path=path, on_full=on_full, kind=kind)


def _check_clock_name(clock: Any) -> None:
    if clock is not None and (not isinstance(clock, str) or clock not in CLOCKS):
        raise ConfigurationError(
            f"a table's clock is 'monotonic', 'injected' or None, got {clock!r}")


def _kind_id(kind: str) -> int:
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise ConfigurationError(f"kind must be 'rates' or 'quotas', got {kind!r}") from None


def _kind_of(clock_id: int) -> Kind:
    for name, value in KINDS.items():
        if value == clock_id:
            return name  # type: ignore[return-value]
    raise TableError(f"unknown table kind (clock id {clock_id})")


def table_path(name: str | None, path: str | os.PathLike[str] | None = None) -> str:
    """The file of the table ``name`` (or ``path`` itself), checking the name."""
    if path is not None:
        return os.fspath(path)
    if name is None:
        raise ConfigurationError("a table needs a name (or a path)")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigurationError(
            f"table name {name!r} is not valid: use 1-200 letters, digits, '_', '.' "
            f"or '-', not starting with '.' or '-'")
    return os.path.join(shm_dir(), f"fastlimit.{name}")


def mapped_by(path: str) -> list[int]:
    """The processes (other than this one) that map the file at ``path``,
    as far as ``/proc/<pid>/maps`` shows: a user sees their own processes
    (root, every one)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return []
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    inode = str(st.st_ino)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/maps") as maps:
                for line in maps:
                    fields = line.split(None, 5)
                    if len(fields) >= 5 and fields[4] == inode and fields[3] == dev:
                        found.append(int(entry))
                        break
        except OSError:  # gone, or not ours to read
            continue
    return sorted(found)


def check_removable(path: str) -> None:
    """Refuse to remove ``path`` unless it is a table file of this user: a
    regular file (not through a link), owned by this process's uid, holding
    a table's magic (or none yet: a creation that died).  A table that no
    longer opens (corrupt header, truncated, another layout or namespace)
    passes: removing it is the way out."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise TableError(f"no table at {path}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise TableError(f"{path} is a symbolic link, not a table: left untouched") from None
        raise TableError(f"cannot open table {path}: {e.strerror}") from None
    try:
        check_owner(fd, path)
        magic = os.pread(fd, len(MAGIC), 0)
    finally:
        os.close(fd)
    if magic not in (MAGIC, bytes(len(magic))):
        raise TableError(f"{path} is not a fastlimit table (magic {magic!r}): left untouched")


def check_owner(fd: int, path: str) -> None:
    """Refuse a table that is not a regular file owned by this user.

    Whoever owns the file can read its hash secret (and aim keys at one
    bucket) and rewrite any key's state.  In a directory anyone may write to,
    as /dev/shm is, another user could create ``fastlimit.<name>`` before this
    program does; opening it anyway would hand them the limits.
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise TableError(f"{path} is not a regular file, so it cannot be a table")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise TableError(
            f"table {path} is owned by uid {st.st_uid}, not by this process's uid {uid}: "
            f"whoever owns it can read its hash secret and rewrite its state.  Run every "
            f"process of the table as one user, or remove the file if you did not make it")


def _half_made(fd: int, raw: bytes, size: int) -> bool:
    """Whether a file without a magic is a table whose creator died before
    finishing it (empty; or sized, with a header all zeros or all but the
    magic written), rather than someone else's file to leave alone."""
    if size == 0:
        return True
    if len(raw) < HEADER_BYTES or raw[: len(MAGIC)] != bytes(len(MAGIC)):
        return False  # _initialise sizes the file before it writes anything
    if raw[len(MAGIC):] != bytes(HEADER_BYTES - len(MAGIC)):
        header = np.frombuffer(raw, HEADER_DTYPE)[0]
        if not (header["version"] == LAYOUT_VERSION and header["header_size"] == HEADER_BYTES
                and size == _segment_bytes(int(header["nbuckets"]))):
            return False
    elif (size - HEADER_BYTES) % BUCKET_BYTES:
        return False
    # Sized but never written to: zeros all through (read once, on this rare path).
    chunk = 1 << 20
    return all(os.pread(fd, chunk, at) == bytes(min(chunk, size - at))
               for at in range(HEADER_BYTES, size, chunk))


def _prepare(fd: int, path: str, capacity: int | None, mode: str, kind: Kind | None) -> int:
    """With the file locked: initialise it if new, else validate it.
    Returns the segment size."""
    size = os.fstat(fd).st_size
    raw = os.pread(fd, min(size, HEADER_BYTES), 0)
    if raw[: len(MAGIC)] != MAGIC:
        if not _half_made(fd, raw, size):
            raise TableError(
                f"{path} is not a fastlimit table (magic {raw[:len(MAGIC)]!r}, expected "
                f"{MAGIC!r}; {size} bytes): it is left untouched")
        # New, or left half-made by a creator that died: (re)initialise.
        if mode == "attach" and capacity is None:
            raise TableError(
                f"table {path} was never initialised (its creator may have died): "
                f"open it with a capacity to initialise it")
        return _initialise(fd, path, capacity or DEFAULT_CAPACITY, kind or "rates")
    if len(raw) < HEADER_BYTES:
        raise TableError(
            f"table {path} is {size} bytes, shorter than its {HEADER_BYTES}-byte header: "
            f"it is corrupt")
    header = np.frombuffer(raw, HEADER_DTYPE)[0]
    if header["version"] != LAYOUT_VERSION:
        raise TableError(
            f"table {path} has layout version {int(header['version'])}; this fastlimit "
            f"uses version {LAYOUT_VERSION}: remove it (`fastlimit rm` with its name, or "
            f"delete the file) and let it be made again, or use the fastlimit that made it")
    if int(header["checksum"]) != _checksum(raw):
        raise TableError(
            f"table {path}'s header is corrupt (its checksum does not match): its secret or "
            f"layout can no longer be trusted; remove it (`fastlimit rm` with its name, or "
            f"delete the file) and let it be made again")
    layout = (int(header["header_size"]), int(header["slot_size"]), int(header["bucket_slots"]),
              int(header["metrics_limiters"]), int(header["metrics_stripes"]))
    if layout != (HEADER_BYTES, SLOT_BYTES, BUCKET_SLOTS, METRICS_LIMITERS, METRICS_STRIPES):
        raise TableError(f"table {path} has an unknown layout {layout}")
    have_kind = _kind_of(int(header["clock_id"]))
    if kind is not None and kind != have_kind:
        raise TableError(f"table {path} holds {have_kind}, not {kind}")
    _check_namespaces(header, path, have_kind)
    have = int(header["capacity"])
    if capacity is not None and capacity != have:
        raise TableError(
            f"table {path} has capacity {have}, not {capacity}: open it with "
            f"capacity={have} (or None), or unlink it to resize")
    expected = _segment_bytes(int(header["nbuckets"]))
    if int(header["nbuckets"]) != nbuckets_for(have) or size != expected:
        raise TableError(
            f"table {path} is {size} bytes, expected {expected}: it is corrupt (truncated?); "
            f"remove it (`fastlimit rm` with its name, or delete the file) once no process "
            f"maps it, and let it be made again")
    boot = _boot_id()
    if have_kind == "rates" and header["boot_id"] != boot:
        # A table on disk that outlived a reboot: its times count from the old
        # boot's CLOCK_MONOTONIC, so every key would look far in the future.
        log.warning("fastlimit: table %s was written before the last reboot; clearing it", path)
        os.pwrite(fd, bytes(expected - HEADER_BYTES), HEADER_BYTES)
        fixed = header.copy()
        fixed["boot_id"] = boot
        fixed["clock"] = 0  # a new boot: the next limiter settles it again
        os.pwrite(fd, _sealed(fixed).tobytes(), 0)
    return expected


def _initialise(fd: int, path: str, capacity: int, kind: Kind) -> int:
    header = _new_header(capacity, kind)
    size = _segment_bytes(int(header["nbuckets"][0]))
    os.ftruncate(fd, 0)  # zero any leftovers of a failed creation
    os.ftruncate(fd, size)
    try:
        # Reserve the pages now: tmpfs otherwise fails later with SIGBUS.
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            pass  # no fallocate on this file system: pages come on first use
        else:
            os.ftruncate(fd, 0)
            free = _free_bytes(path)
            raise TableError(
                f"cannot allocate {size} bytes for table {path} (capacity {capacity}): "
                f"{e.strerror}; {free} bytes free there.  Docker's default /dev/shm "
                f"is 64 MB (raise it with --shm-size), or use a smaller capacity") from None
    os.pwrite(fd, header.tobytes()[len(MAGIC):], len(MAGIC))
    os.pwrite(fd, MAGIC, 0)  # last: a header with a magic is complete
    return size


def _free_bytes(path: str) -> int:
    try:
        st = os.statvfs(os.path.dirname(path) or ".")
        return st.f_bavail * st.f_frsize
    except OSError:
        return -1
