"""Run-time rate overrides for one subject of one limit, shared by every
process: a token's limit changed from the dashboard applies in every worker
at its next check, with no restart.

Storage, three files:

- ``<path>``, the snapshot: a JSON file holding every override as of its
  writing, only ever replaced whole (written aside, then renamed over), so a
  reader sees the old one or the new one, never half of one.  It names the
  journal that continues it.
- ``<path>.journal``: the changes since the snapshot, appended one batch per
  record (a length, a CRC-32 and a JSON payload).  A change costs one
  append, not a rewrite of every override; a reader that is behind applies
  only the records after the offset it last read, so its cost is that of
  the entries that changed.  A record that is cut short or fails its
  checksum is never applied.  When the journal outgrows twice the snapshot
  (and 256 KiB), the writer folds both into a new snapshot and starts a new
  journal (compaction: amortised, each change pays for a constant number of
  bytes rewritten).  It ends the old journal with a *seal* record naming the
  new journal and the new snapshot's identity, so a reader that was
  following the old journal moves on to the new one without re-reading the
  snapshot.
- ``<path>.gen``: a generation counter that every process maps into memory;
  a writer bumps it (under an exclusive ``flock`` on that file, which also
  orders writers) after its append or rename.  A check reads the counter,
  one 8-byte load from a mapped page and no system call, and looks at the
  files only when it has moved.  This beats polling the file's mtime (a
  ``stat`` per check, and mtimes can fail to change between two quick
  writes) and a fixed-size table of overrides in shared memory (a capacity
  to size, a custom layout, and no file to inspect or keep across reboots).

Subjects (tokens, account ids) are not written to the files: entries are
keyed by a BLAKE2b digest of ``limit + subject`` under a random salt kept in
the snapshot.
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
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from fastlimit.errors import ConfigurationError
from fastlimit.limiters.rate import Rate
from fastlimit.policy._plan import Generation
from fastlimit.stores.table import check_owner

__all__ = ["Overrides", "default_path", "files_of"]


def default_path(table_path: str) -> str:
    """Where a policy on the table at ``table_path`` keeps its overrides."""
    return f"{table_path}.overrides.json"


def files_of(path: str) -> tuple[str, str, str]:
    """The overrides snapshot at ``path``, its generation counter and its
    journal beside it."""
    return path, path + ".gen", path + ".journal"

log = logging.getLogger("fastlimit")

_GEN_MAGIC = b"FLOVGEN1"
_GEN = struct.Struct("=Q")  # native order: the counter is mapped, never leaves the host
_GEN_BYTES = len(_GEN_MAGIC) + _GEN.size
_FORMAT = "fastlimit-overrides"
_VERSION = 2  # version 1: the same snapshot without a journal (still read)

# The journal: a header (magic, the id its snapshot names, CRC-32 of both),
# then records: payload length, CRC-32, the payload (JSON: a list of
# changes [digest, limit, rate or null], or a seal {"next", "snapshot"}).
_J_MAGIC = b"FLOVJRN1"
_J_HEAD = struct.Struct("<8s16sI")
_J_REC = struct.Struct("<II")  # the CRC-32 of the payload, started from its length
_READ_AHEAD = 1 << 16
_NOTHING, _APPLIED, _RELOAD = 0, 1, 2  # what reading the journal came to
# Compaction when the journal would pass both: a journal of small
# snapshots is not rewritten at every few changes.
JOURNAL_FACTOR = 2
JOURNAL_MIN_BYTES = 256 << 10

# A (device, inode, size, mtime, ctime) of the snapshot: a file replaced or
# rewritten under us, by a compaction or by hand, shows as another identity.
_Ident = tuple[int, int, int, int, int]
# One change: the digest, the limit, the rate's text (None: removed).
_Change = tuple[str, str, str | None]


class _BadJournal(Exception):
    """A journal record that is not one of ours: never applied."""


class Overrides:
    """Per-subject rates that replace a limit's configured rate.

    With a ``path``, every process that opens the same path shares the
    overrides; without one they live in this process only.

    Args:
        path: the snapshot file (created on first write; its directory must
            exist).  The journal ``<path>.journal`` and the counter file
            ``<path>.gen`` are created beside it.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "overrides.json")
        >>> writer, reader = Overrides(path), Overrides(path)
        >>> writer.set("token", "tok_abc", "500/1h")
        >>> writer.update({("token", "tok_b"): "10/1m", ("token", "tok_abc"): None})
        1
        >>> reader.refresh()
        >>> reader.rate_for("token", "tok_b")
        Rate(limit=10, period_ns=60000000000)
        >>> reader.rate_for("token", "tok_abc") is None
        True
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._path = None if path is None else os.fspath(path)
        # One tuple (salt, entries, index, limits), swapped whole on a full
        # load, so a thread reading never pairs one file's salt with another
        # file's index.  A journal record changes the dicts in place: copying
        # them would cost every entry per change.
        self._state: _State = (os.urandom(16), {}, {}, frozenset())
        self._limit_counts: dict[str, int] = {}
        self.version = 0
        """Bumped whenever the overrides this process sees change: what a
        reader caches from them is good while it stays the same."""
        self._digests: dict[tuple[str, str], str] = {}  # (limit, subject) -> digest
        self._seen = -1
        self._write_lock = threading.Lock()  # flock does not exclude our own threads
        self._read_lock = threading.Lock()   # one thread applies the journal at a time
        self._fd = -1
        self._pid = os.getpid()
        self._mm: mmap.mmap | None = None
        self._view: memoryview | None = None
        # Where this process is in the files: the snapshot it loaded (its
        # identity and size), the journal that snapshot names, and, once
        # open, that journal and the offset of the first record not applied.
        self._snap: _Ident | None = None
        self._snap_bytes = 0
        self._journal_id: bytes | None = None
        self._jfd = -1
        self._joff = 0
        self._jbad: str | None = None   # why the journal stopped being read
        self._jtorn = False             # an unfinished record at its end
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

        :class:`~fastlimit.Policy` calls it before every check.  While
        another thread of this process is doing so (or writing), it returns
        at once: that thread applies every change up to the counter it
        finds when it is done, so a request never waits on a compaction."""
        if self._view is None:
            return
        gen = self._generation.value()
        if gen == self._seen or not self._read_lock.acquire(blocking=False):
            return
        try:
            while True:
                # The counter is read before the files: a write landing in
                # between bumps it again, and the loop looks once more.
                try:
                    self._sync()
                except _BAD_FILE as e:
                    # A bad file must not fail every request or a worker's
                    # start: keep what we had.  It is read again only when
                    # the counter says the files changed, so this is said
                    # once per bad write.
                    log.error("fastlimit: cannot load overrides from %s (%s); keeping %d "
                              "earlier ones", self._path, _short(e), len(self))
                self._seen = gen
                now = self._generation.value()
                if now == gen:
                    return
                gen = now
        finally:
            self._read_lock.release()

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
        self._commit([_checked(limit, subject, rate)])

    def clear(self, limit: str, subject: str) -> bool:
        """Drop ``subject``'s override: the configured rate applies again.
        Returns whether there was one."""
        return self._commit([(limit, subject, None)])[0]

    def update(self, changes: Mapping[tuple[str, str], Rate | str | None]
               | Iterable[tuple[tuple[str, str], Rate | str | None]]) -> int:
        """Set or drop many overrides at once: ``{(limit, subject): rate}``,
        where a rate of None drops that subject's override (as
        :meth:`clear`).  Every rate is checked before anything is written;
        then the whole batch is one lock, one journal record and one
        generation bump, and other processes see all of it or none of it.

        Returns how many of the dropped subjects had an override.

        Raises:
            ConfigurationError: a rate, limit or subject is not valid
                (nothing is changed).

        Example:
            >>> o = Overrides()
            >>> o.update({("token", "a"): "5/1m", ("token", "b"): "7/1h"})
            0
            >>> o.update({("token", "a"): None, ("token", "zz"): None})
            1
            >>> len(o)
            1
        """
        items = changes.items() if isinstance(changes, Mapping) else changes
        batch: dict[tuple[str, str], tuple[str, str, str | None]] = {}
        for key, rate in items:
            if not isinstance(key, tuple) or len(key) != 2:
                raise ConfigurationError(
                    f"an override's key must be a (limit, subject) pair, got {key!r}")
            batch[key] = _checked(key[0], key[1], rate)  # the last of a key wins
        if not batch:
            return 0
        existed = self._commit(list(batch.values()))
        return sum(1 for (_, _, r), had in zip(batch.values(), existed, strict=True)
                   if r is None and had)

    def __len__(self) -> int:
        return len(self._state[1])

    def close(self) -> None:
        """Unmap the counter and close the files (this process only)."""
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
        self._detach()

    def __repr__(self) -> str:
        return f"<Overrides {self._path or 'in-process'} entries={len(self)}>"

    # -- internals: the state in memory --------------------------------------------

    def _install(self, salt: bytes, entries: dict[str, tuple[str, str]]) -> None:
        """Replace the whole state (a snapshot was loaded)."""
        index = {fp: _rate(r) for fp, (_, r) in entries.items()}
        counts: dict[str, int] = {}
        for limit, _ in entries.values():
            counts[limit] = counts.get(limit, 0) + 1
        if salt != self._state[0]:
            self._digests = {}
        self._limit_counts = counts
        self._state = (salt, entries, index, frozenset(counts))
        self._changed()

    def _apply(self, changes: list[_Change]) -> list[bool]:
        """Apply one batch in place; returns whether each digest had an entry."""
        salt, entries, index, limits = self._state
        counts = self._limit_counts
        existed = []
        new_limits = False
        for fp, limit, rate in changes:
            old = entries.get(fp)
            existed.append(old is not None)
            # Overwritten, not dropped and added: a thread reading between
            # the two would see no override for a subject that keeps one.
            if rate is not None:
                entries[fp] = (limit, rate)
                index[fp] = _rate(rate)
                if limit in counts:
                    counts[limit] += 1
                else:
                    counts[limit] = 1
                    new_limits = True
            elif old is not None:
                del entries[fp]
                index.pop(fp, None)
            if old is not None:
                left = counts[old[0]] - 1
                if left:
                    counts[old[0]] = left
                else:
                    del counts[old[0]]
                    new_limits = True
        if new_limits:
            self._state = (salt, entries, index, frozenset(counts))
        self._changed()
        return existed

    def _changed(self) -> None:
        self.version += 1
        if self._path is None:  # in-process: readers watch this process's counter
            self._generation.set(self._generation.value() + 1)

    # -- internals: reading the files ----------------------------------------------

    def _sync(self, writer: bool = False) -> None:
        """Bring the state up to the files: the journal's new records only,
        unless the snapshot was replaced by something other than a
        compaction this process can follow.  Raises what a bad file raises
        (the state is then left as it was, or as far as the good records
        go).  A ``writer`` (under the lock) always checks the snapshot."""
        path = self._path
        assert path is not None
        if self._jfd >= 0 and self._jbad is None:
            got = self._follow()
            if got == _RELOAD:
                self._load_full()
                return
            if got == _APPLIED and not writer:
                # New records: their writer found this snapshot in place
                # (the journal it continues), under the lock, just before.
                return
        # Nothing new in the journal, yet the counter moved: the snapshot
        # may have been replaced (a compaction not sealed yet, or by hand).
        ident = _ident(path)
        if ident != self._snap:
            self._load_full()
        elif ident is not None and self._jfd < 0 and self._attach() == _RELOAD:
            self._load_full()

    def _load_full(self) -> None:
        """Load the snapshot, then its journal."""
        path = self._path
        assert path is not None
        try:
            salt, entries, journal_id, ident, size = _read(path)
        except FileNotFoundError:
            # Removed: no overrides, and a new salt for the next file.
            self._detach()
            self._snap, self._snap_bytes, self._journal_id = None, 0, None
            self._install(os.urandom(16), {})
            return
        self._detach()
        self._snap, self._snap_bytes, self._journal_id = ident, size, journal_id
        self._install(salt, entries)
        self._attach()

    def _detach(self) -> None:
        if self._jfd >= 0:
            os.close(self._jfd)
        self._jfd, self._joff, self._jbad, self._jtorn = -1, 0, None, False

    def _attach(self) -> int:
        """Open the journal the loaded snapshot names, and apply it.  Returns
        what :meth:`_follow` does (nothing, when there is none to open)."""
        assert self._path is not None
        if self._journal_id is None:
            return _NOTHING
        jpath = files_of(self._path)[2]
        try:
            fd = os.open(jpath, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return _NOTHING  # a compaction's snapshot renamed, its journal not yet
        try:
            check_owner(fd, jpath)
            head = os.pread(fd, _J_HEAD.size, 0)
        except BaseException:
            os.close(fd)
            raise
        if len(head) < _J_HEAD.size:
            os.close(fd)
            return _NOTHING  # not a journal of this snapshot
        magic, jid, crc = _J_HEAD.unpack(head)
        if magic != _J_MAGIC or zlib.crc32(head[:24]) != crc or jid != self._journal_id:
            # Not the snapshot's journal: the old one still, while a
            # compaction renames its files (the snapshot holds every
            # change it had), or one left by a writer that died then.
            os.close(fd)
            return _NOTHING
        self._jfd, self._joff, self._jbad, self._jtorn = fd, _J_HEAD.size, None, False
        return self._follow()

    def _follow(self) -> int:
        """Apply the journal's records after our offset, and follow a seal
        to the next journal.  Returns _NOTHING (no new record), _APPLIED, or
        _RELOAD: the snapshot must be loaded whole (sealed for one no longer
        there, or replaced while this process was far behind)."""
        assert self._path is not None
        fd, start = self._jfd, self._joff
        buf = os.pread(fd, _READ_AHEAD, start)  # one call, no fstat, when little is new
        if len(buf) == _READ_AHEAD:
            size = os.fstat(fd).st_size
            if size > MAX_FILE_BYTES:
                self._journal_refused(f"it is {size} bytes, more than {MAX_FILE_BYTES}")
                return _NOTHING
            if size - start > self._snap_bytes and _ident(self._path) != self._snap:
                return _RELOAD  # reading the snapshot costs less than its journal
            buf += os.pread(fd, size - start - len(buf), start + len(buf))
        pos, n, got = 0, len(buf), _NOTHING
        while pos + _J_REC.size <= n:
            length, crc = _J_REC.unpack_from(buf, pos)
            end = pos + _J_REC.size + length
            if length > MAX_FILE_BYTES:
                self._joff = start + pos
                self._journal_refused(f"a record at offset {self._joff} claims {length} bytes")
                return got
            if end > n:
                break
            payload = buf[pos + _J_REC.size:end]
            try:
                if zlib.crc32(payload, length) != crc:
                    raise _BadJournal("its checksum does not match")
                record = _parse_record(payload)
            except _BadJournal as e:
                self._joff = start + pos
                self._journal_refused(f"the record at offset {self._joff} is refused: {e}")
                return got
            pos = end
            if isinstance(record, list):
                self._apply(record)
                got = _APPLIED
                continue
            # A seal: the snapshot replaced by a compaction, and its journal.
            self._joff = start + pos
            next_id, sealed = record
            if next_id == self._journal_id or _ident(self._path) != sealed:
                return _RELOAD  # replaced again since (or a loop)
            self._detach()
            self._snap, self._journal_id = sealed, next_id
            self._snap_bytes = sealed[2]
            self._attach()
            return _APPLIED  # (or nothing new: the counter moved for the seal)
        self._joff = start + pos
        # Bytes after the last whole record: a writer's append under way,
        # or one that died writing (the next writer drops them).
        self._jtorn = pos < n
        return got

    def _journal_refused(self, why: str) -> None:
        # The records before it stay applied; none after it is read, and the
        # next writer folds the good ones into a new snapshot.
        assert self._path is not None
        self._jbad = why
        log.error("fastlimit: cannot load overrides from %s (%s); keeping %d earlier ones",
                  files_of(self._path)[2], why, len(self))

    # -- internals: writing --------------------------------------------------------

    def _commit(self, batch: list[tuple[str, str, str | None]]) -> list[bool]:
        with self._write_lock:
            if self._path is None or self._view is None:
                salt = self._state[0]
                return self._apply([(_fingerprint(salt, lim, sub), lim, r)
                                    for lim, sub, r in batch])
            if self._pid != os.getpid():
                # Forked after opening (gunicorn --preload): the inherited
                # descriptor shares its open file, and so its flock, with the
                # parent and siblings.  A lock of our own needs our own open.
                os.close(self._fd)
                self._fd = os.open(files_of(self._path)[1], os.O_RDWR | os.O_CLOEXEC)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                with self._read_lock:
                    return self._commit_locked(batch)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _commit_locked(self, batch: list[tuple[str, str, str | None]]) -> list[bool]:
        path = self._path
        assert path is not None
        try:
            self._sync(writer=True)  # the latest, not our copy
        except _BAD_FILE as e:
            raise ConfigurationError(
                f"{path}: cannot update the overrides, the files are not readable as "
                f"such ({_short(e)}); fix or remove them") from None
        salt = self._state[0]
        changes = [(_fingerprint(salt, lim, sub), lim, r) for lim, sub, r in batch]
        record = _record([list(c) for c in changes])
        if self._must_compact(len(record)):
            entries = self._state[1]
            existed = [fp in entries for fp, _, _ in changes]
            new = dict(entries)
            for fp, limit, rate in changes:
                if rate is None:
                    new.pop(fp, None)
                else:
                    new[fp] = (limit, rate)
            self._compact(salt, new, record)
        else:
            if self._jtorn:
                # Under the lock no append is under way: what follows the
                # last whole record is a dead writer's, never applied.
                log.warning("fastlimit: %s ends in an unfinished record; dropping it",
                            files_of(path)[2])
                os.ftruncate(self._jfd, self._joff)
                self._jtorn = False
            _write_all(self._jfd, record, self._joff)
            self._joff += len(record)
            existed = self._apply(changes)
        gen = self._generation.value() + 1
        self._generation.set(gen)
        self._seen = gen
        return existed

    def _must_compact(self, adding: int) -> bool:
        """Whether this change is written as a new snapshot (and journal)."""
        jpath = files_of(self._path or "")[2]
        if self._snap is None or self._journal_id is None:
            return True  # the first write, or a file from before the journal
        if self._jbad is not None:
            log.warning("fastlimit: writing a new snapshot of the overrides without %s, "
                        "whose changes from the refused record on are lost (%s)",
                        jpath, self._jbad)
            return True
        if self._jfd < 0 or not _same_file(self._jfd, jpath):
            # Appends to a journal no longer at its name would reach only
            # the processes that hold it open.
            log.warning("fastlimit: %s is missing or not the snapshot's; writing a new "
                        "snapshot and journal", jpath)
            return True
        return self._joff + adding > self._journal_budget()

    def _journal_budget(self) -> int:
        return min(max(JOURNAL_MIN_BYTES, JOURNAL_FACTOR * self._snap_bytes),
                   MAX_FILE_BYTES // 2)

    def _compact(self, salt: bytes, entries: dict[str, tuple[str, str]], record: bytes) -> None:
        """Write ``entries`` (the state with the change ``record`` applied)
        as a new snapshot, with an empty journal after it."""
        path, _, jpath = files_of(self._path or "")
        journal_id = os.urandom(16)
        data = json.dumps(
            {"format": _FORMAT, "version": _VERSION, "salt": salt.hex(),
             "journal": journal_id.hex(),
             "overrides": {fp: {"limit": lim, "rate": r} for fp, (lim, r) in entries.items()}},
            separators=(",", ":")).encode()
        if len(data) > MAX_FILE_BYTES:
            raise ConfigurationError(
                f"{path}: {len(entries)} overrides would take {len(data)} bytes, more than "
                f"an overrides file's {MAX_FILE_BYTES}; drop some first")
        tmp, jtmp = f"{path}.{os.getpid()}.tmp", f"{jpath}.{os.getpid()}.tmp"
        _write_aside(tmp, data)
        try:
            head = _J_MAGIC + journal_id
            jfd = _create_aside(jtmp)
        except BaseException:
            _unlink(tmp)
            raise
        # A seal says: the new snapshot is the old one and this journal up
        # to here.  So the change goes here too, before it (unless it would
        # make the journal too big to read: its readers then load the new
        # snapshot whole).
        sealed = self._jfd >= 0 and self._jbad is None and not self._jtorn \
            and self._joff + len(record) <= MAX_FILE_BYTES // 2
        try:
            _write_all(jfd, head + struct.pack("<I", zlib.crc32(head)), 0)
            os.fsync(jfd)
            if sealed:
                _write_all(self._jfd, record, self._joff)
                self._joff += len(record)
            # The snapshot first: until the journal follows it, a reader
            # finds the old journal's id, not the new, and uses the
            # snapshot alone, which holds every change.
            os.replace(tmp, path)
            os.replace(jtmp, jpath)
        except BaseException:
            os.close(jfd)
            _unlink(tmp)
            _unlink(jtmp)
            raise
        ident = _ident(path)
        assert ident is not None
        if sealed:
            # Readers on the old journal follow the seal, loading nothing.
            seal = _record({"next": journal_id.hex(), "snapshot": list(ident)})
            try:
                _write_all(self._jfd, seal, self._joff)
            except OSError as e:  # they load the new snapshot whole instead
                log.warning("fastlimit: cannot seal %s (%s)", jpath, _short(e))
        self._detach()
        self._jfd, self._joff = jfd, _J_HEAD.size
        self._snap, self._snap_bytes, self._journal_id = ident, len(data), journal_id
        self._install(salt, entries)


_State = tuple[bytes, dict[str, tuple[str, str]], dict[str, Rate], frozenset[str]]


def _fingerprint(salt: bytes, limit: str, subject: str) -> str:
    h = hashlib.blake2b(key=salt, digest_size=16)
    h.update(limit.encode())
    h.update(b"\0")
    h.update(subject.encode())
    return h.hexdigest()


def _check_name(value: object, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"an override's {what} must be a non-empty str, got {value!r}")


def _checked(limit: str, subject: str, rate: Rate | str | None) -> tuple[str, str, str | None]:
    text = None
    if isinstance(rate, str) and rate in _CANONICAL:
        text = _CANONICAL[rate]
    elif rate is not None:
        parsed = Rate.parse(rate)
        text = str(parsed)
        _remember(text, parsed)
        if isinstance(rate, str):
            if len(_CANONICAL) >= 1 << 16:
                _CANONICAL.clear()
            _CANONICAL[rate] = text
    _check_name(limit, "limit")
    _check_name(subject, "subject")
    return limit, subject, text


_RATES: dict[str, Rate] = {}       # a rate's text as written -> the rate
_CANONICAL: dict[str, str] = {}    # a rate as given -> its text as written


def _rate(text: str) -> Rate:
    # A dashboard gives thousands of subjects a handful of rates: parse each
    # once (Rate.parse costs more than the rest of applying a change).
    found = _RATES.get(text)
    if found is None:
        found = _remember(text, Rate.parse(text))
    return found


def _remember(text: str, rate: Rate) -> Rate:
    if len(_RATES) >= 1 << 16:
        _RATES.clear()
    _RATES[text] = rate
    return rate


# What a file that is not a good overrides file raises as it is read: JSON
# nested past the parser's recursion limit too.
_BAD_FILE = (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError)
# Far more than any dashboard writes (100,000 overrides are about 8 MB).
MAX_FILE_BYTES = 64 << 20


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 300 else text[:300] + "..."


def _ident(path: str) -> _Ident | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read(path: str) -> tuple[bytes, dict[str, tuple[str, str]], bytes | None, _Ident, int]:
    """The snapshot: salt, entries, its journal's id, identity and size."""
    # Overrides set any subject's rate: like a table, read them only from a
    # regular file of our own, never through a link, and without blocking
    # (a FIFO planted at the path would hold every worker at its open).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        check_owner(fd, path)
        st = os.fstat(fd)
        if st.st_size > MAX_FILE_BYTES:
            raise ValueError(f"{path} is {st.st_size} bytes, more than an overrides file's "
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
    if data.get("version") not in (1, _VERSION):
        raise ValueError(f"{path} has version {data.get('version')!r}, expected 1 or {_VERSION}")
    given = data["overrides"]
    if not isinstance(given, dict):
        raise TypeError("'overrides' must be an object")
    entries: dict[str, tuple[str, str]] = {}
    for fp, e in given.items():
        rate, limit = e["rate"], e["limit"]
        if not isinstance(rate, str):
            raise TypeError("an override's rate must be a string")
        _rate(rate)
        if not isinstance(limit, str):
            raise TypeError("an override's limit must be a string")
        entries[fp] = (limit, rate)
    journal_id = None
    if data["version"] >= 2:
        journal_id = bytes.fromhex(data["journal"])
        if len(journal_id) != 16:
            raise ValueError(f"{path} names a journal id of {len(journal_id)} bytes, not 16")
    ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return bytes.fromhex(data["salt"]), entries, journal_id, ident, len(raw)


def _record(payload: object) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _J_REC.pack(len(body), zlib.crc32(body, len(body))) + body


def _parse_record(payload: bytes) -> list[_Change] | tuple[bytes, _Ident]:
    """A batch of changes, or a seal (the next journal's id, the snapshot's
    identity); every field checked before any is applied."""
    try:
        data: Any = json.loads(payload.decode("utf-8"))
        if type(data) is dict and data.keys() == {"next", "snapshot"}:
            next_id = bytes.fromhex(data["next"])
            ident = tuple(data["snapshot"])
            if len(next_id) != 16 or len(ident) != 5 or not all(
                    type(v) is int for v in ident):
                raise ValueError("a seal names a journal id and a file identity")
            return next_id, ident
        if type(data) is not list:
            raise ValueError("a record is a list of changes or a seal")
        changes: list[_Change] = []
        for c in data:
            if type(c) is not list or len(c) != 3:
                raise ValueError(f"a change is [digest, limit, rate], got {c!r:.80}")
            fp, limit, rate = c
            if type(fp) is not str or len(fp) != 32 or type(limit) is not str or not limit:
                raise ValueError(f"a change's digest and limit are strings, got {c!r:.80}")
            if rate is not None:
                if type(rate) is not str:
                    raise ValueError(f"a change's rate is a string or null, got {rate!r:.80}")
                if rate not in _RATES:
                    _rate(rate)
            changes.append((fp, limit, rate))
        return changes
    except (ValueError, TypeError, KeyError, RecursionError, ConfigurationError) as e:
        raise _BadJournal(_short(e)) from None


def _same_file(fd: int, path: str) -> bool:
    try:
        there = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    done = os.pwrite(fd, data, offset)
    if done != len(data):
        # A full disk: leave no part of a record for a reader to wait on.
        os.ftruncate(fd, offset)
        raise OSError(f"wrote {done} of {len(data)} bytes of an overrides record")


def _create_aside(tmp: str) -> int:
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        check_owner(fd, tmp)  # a planted tmp file would become the overrides
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_aside(tmp: str, data: bytes) -> None:
    fd = _create_aside(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the rename must not land before the data
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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
