"""Run-time rate overrides for one subject of one limit, shared by every
process: a token's limit changed from the dashboard applies in every worker
at its next check, with no restart.

Storage: a JSON file holds the overrides and is only ever replaced whole
(written aside, then renamed over), so a reader sees the old file or the new
one, never half of one.  Beside it, ``<path>.gen`` holds a generation counter
that every process maps into memory; a writer bumps it (under an exclusive
``flock`` on that file) after the rename.  A check reads the counter, one
8-byte load from a mapped page and no system call, and re-reads the JSON
file only when it has moved.  This beats polling the file's mtime (a
``stat`` per check, and mtimes can fail to change between two quick writes)
and a fixed-size table of overrides in shared memory (a capacity to size, a
custom layout, and no file to inspect or keep across reboots).

Subjects (tokens, account ids) are not written to the file: entries are
keyed by a BLAKE2b digest of ``limit + subject`` under a random salt kept in
the file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastlimit.errors import ConfigurationError
from fastlimit.limiters.rate import Rate
from fastlimit.policy._plan import Generation
from fastlimit.stores.table import check_owner

__all__ = ["Overrides", "default_path", "files_of"]


def default_path(table_path: str) -> str:
    """Where a policy on the table at ``table_path`` keeps its overrides."""
    return f"{table_path}.overrides.json"


def files_of(path: str) -> tuple[str, str]:
    """The overrides file at ``path`` and its generation counter beside it."""
    return path, path + ".gen"

log = logging.getLogger("fastlimit")

_GEN_MAGIC = b"FLOVGEN1"
_GEN = struct.Struct("=Q")  # native order: the counter is mapped, never leaves the host
_GEN_BYTES = len(_GEN_MAGIC) + _GEN.size
_FORMAT = "fastlimit-overrides"
_VERSION = 1


class Overrides:
    """Per-subject rates that replace a limit's configured rate.

    With a ``path``, every process that opens the same path shares the
    overrides; without one they live in this process only.

    Args:
        path: the JSON file (created on first write; its directory must
            exist).  The counter file ``<path>.gen`` is created beside it.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "overrides.json")
        >>> writer, reader = Overrides(path), Overrides(path)
        >>> writer.set("token", "tok_abc", "500/1h")
        >>> reader.refresh()
        >>> reader.rate_for("token", "tok_abc")
        Rate(limit=500, period_ns=3600000000000)
        >>> reader.rate_for("token", "tok_other") is None
        True
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._path = None if path is None else os.fspath(path)
        # One tuple, swapped whole, so a thread reading never pairs one
        # file's salt with another file's index.
        self._state: _State = (os.urandom(16), {}, {}, frozenset())
        self.version = 0
        """Bumped whenever the overrides this process sees change: what a
        reader caches from them is good while it stays the same."""
        self._digests: dict[tuple[str, str], str] = {}  # (limit, subject) -> digest
        self._seen = -1
        self._write_lock = threading.Lock()  # flock does not exclude our own threads
        self._fd = -1
        self._pid = os.getpid()
        self._mm: mmap.mmap | None = None
        self._view: memoryview | None = None
        # The counter every reader checks (Policy: at each request): the
        # mapped file's word, or this process's own for in-process overrides.
        self._generation = Generation()
        if self._path is not None:
            self._fd, self._mm = _open_counter(files_of(self._path)[1])
            self._view = memoryview(self._mm)[len(_GEN_MAGIC):_GEN_BYTES].cast("Q")
            self._generation = Generation(self._view)
            self.refresh()

    @property
    def path(self) -> str | None:
        return self._path

    def refresh(self) -> None:
        """Pick up changes made by other processes (cheap when there are none).

        :class:`~fastlimit.Policy` calls it before every check."""
        if self._view is None:
            return
        gen = self._generation.value()
        if gen != self._seen:
            # The counter is read before the file: a write landing in
            # between bumps it again, so the next check reloads once more.
            self._load()
            self._seen = gen

    @property
    def limits(self) -> frozenset[str]:
        """The limits that have overrides (a check of another costs nothing)."""
        return self._state[3]

    def rate_for(self, limit: str, subject: str) -> Rate | None:
        """The override for ``subject`` under ``limit``, or None.

        Call :meth:`refresh` first to see other processes' changes."""
        salt, _, index, limits = self._state
        if limit not in limits:
            return None
        digest = self._digests.get((limit, subject))
        if digest is None:
            if len(self._digests) >= 4096:
                self._digests.clear()
            digest = self._digests[(limit, subject)] = _fingerprint(salt, limit, subject)
        return index.get(digest)

    def set(self, limit: str, subject: str, rate: Rate | str) -> None:
        """Give ``subject`` its own ``rate`` under ``limit``, in every process.

        Raises:
            ConfigurationError: ``rate`` is not a valid rate.
        """
        rate = Rate.parse(rate)
        _check_name(limit, "limit")
        _check_name(subject, "subject")
        with self._writing() as (salt, entries):
            entries[_fingerprint(salt, limit, subject)] = {"limit": limit, "rate": str(rate)}

    def clear(self, limit: str, subject: str) -> bool:
        """Drop ``subject``'s override: the configured rate applies again.
        Returns whether there was one."""
        with self._writing() as (salt, entries):
            return entries.pop(_fingerprint(salt, limit, subject), None) is not None

    def __len__(self) -> int:
        return len(self._state[1])

    def close(self) -> None:
        """Unmap the counter and close its file (this process only)."""
        self._generation.release()
        if self._view is not None:
            self._view.release()  # an exported buffer would keep the map from closing
            self._view = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self) -> str:
        return f"<Overrides {self._path or 'in-process'} entries={len(self)}>"

    # -- internals -----------------------------------------------------------

    def _install(self, salt: bytes, entries: dict[str, dict[str, str]]) -> None:
        index = {fp: Rate.parse(e["rate"]) for fp, e in entries.items()}
        if salt != self._state[0]:
            self._digests = {}
        self._state = (salt, entries, index, frozenset(e["limit"] for e in entries.values()))
        self.version += 1
        if self._path is None:  # in-process: readers watch this process's counter
            self._generation.set(self._generation.value() + 1)

    def _load(self) -> None:
        assert self._path is not None
        try:
            salt, entries = _read(self._path)
            self._install(salt, entries)
        except FileNotFoundError:
            self._install(self._state[0], {})
        except _BAD_FILE as e:
            # A bad file must not fail every request or a worker's start:
            # keep what we had.  It is read again only when the counter
            # says the file changed, so this is said once per bad write.
            log.error("fastlimit: cannot load overrides from %s (%s); keeping %d earlier ones",
                      self._path, _short(e), len(self))

    @contextmanager
    def _writing(self) -> Iterator[tuple[bytes, dict[str, dict[str, str]]]]:
        with self._write_lock:
            if self._path is None or self._view is None:
                salt, entries = self._state[0], dict(self._state[1])
                yield salt, entries
                self._install(salt, entries)
                return
            if self._pid != os.getpid():
                # Forked after opening (gunicorn --preload): the inherited
                # descriptor shares its open file, and so its flock, with the
                # parent and siblings.  A lock of our own needs our own open.
                os.close(self._fd)
                self._fd = os.open(files_of(self._path)[1], os.O_RDWR | os.O_CLOEXEC)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                try:
                    salt, entries = _read(self._path)  # the latest, not our copy
                except FileNotFoundError:
                    salt, entries = os.urandom(16), {}
                except _BAD_FILE as e:
                    raise ConfigurationError(
                        f"{self._path}: cannot update the overrides, the file is not "
                        f"readable as such ({_short(e)}); fix or remove it") from None
                yield salt, entries
                _write(self._path, salt, entries)
                gen = self._generation.value() + 1
                self._generation.set(gen)
                self._install(salt, entries)
                self._seen = gen
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)


_State = tuple[bytes, dict[str, dict[str, str]], dict[str, Rate], frozenset[str]]


def _fingerprint(salt: bytes, limit: str, subject: str) -> str:
    h = hashlib.blake2b(key=salt, digest_size=16)
    h.update(limit.encode())
    h.update(b"\0")
    h.update(subject.encode())
    return h.hexdigest()


def _check_name(value: object, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"an override's {what} must be a non-empty str, got {value!r}")


# What a file that is not a good overrides file raises as it is read: JSON
# nested past the parser's recursion limit too.
_BAD_FILE = (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError)
# Far more than any dashboard writes (5,000 overrides are about 1 MB).
MAX_FILE_BYTES = 64 << 20


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 300 else text[:300] + "..."


def _read(path: str) -> tuple[bytes, dict[str, dict[str, str]]]:
    # Overrides set any subject's rate: like a table, read them only from a
    # regular file of our own, never through a link, and without blocking
    # (a FIFO planted at the path would hold every worker at its open).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        check_owner(fd, path)
        size = os.fstat(fd).st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{path} is {size} bytes, more than an overrides file's "
                             f"{MAX_FILE_BYTES}")
    except BaseException:
        os.close(fd)
        raise
    with open(fd, "rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)  # the file may grow after the fstat
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"{path} is more than an overrides file's {MAX_FILE_BYTES} bytes")
    data: Any = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a fastlimit overrides file")
    if data.get("version") != _VERSION:
        raise ValueError(f"{path} has version {data.get('version')!r}, expected {_VERSION}")
    entries = data["overrides"]
    if not isinstance(entries, dict):
        raise TypeError("'overrides' must be an object")
    for e in entries.values():
        Rate.parse(e["rate"])
        if not isinstance(e["limit"], str):
            raise TypeError("an override's limit must be a string")
    return bytes.fromhex(data["salt"]), entries


def _write(path: str, salt: bytes, entries: dict[str, dict[str, str]]) -> None:
    data = {"format": _FORMAT, "version": _VERSION, "salt": salt.hex(), "overrides": entries}
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        check_owner(fd, tmp)  # a planted tmp file would become the overrides
    except BaseException:
        os.close(fd)
        raise
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())  # the rename must not land before the data
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _open_counter(path: str) -> tuple[int, mmap.mmap]:
    try:
        # O_NONBLOCK: a FIFO planted here must not hold the worker at its open
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                     | os.O_NONBLOCK, 0o600)
    except OSError as e:
        raise ConfigurationError(
            f"cannot open the overrides counter {path}: {e.strerror} (it must be a "
            f"regular file of ours, not a link)") from None
    try:
        check_owner(fd, path)
        fcntl.flock(fd, fcntl.LOCK_EX)  # one process initialises a new file
        try:
            head = os.pread(fd, _GEN_BYTES, 0)
            if len(head) < _GEN_BYTES or head[: len(_GEN_MAGIC)] == bytes(len(_GEN_MAGIC)):
                os.ftruncate(fd, _GEN_BYTES)
                os.pwrite(fd, _GEN_MAGIC + _GEN.pack(0), 0)
            elif head[: len(_GEN_MAGIC)] != _GEN_MAGIC:
                raise ConfigurationError(f"{path} is not a fastlimit overrides counter")
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return fd, mmap.mmap(fd, _GEN_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
