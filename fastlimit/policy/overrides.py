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
  bytes rewritten).  The new snapshot is the state at one offset of the old
  journal, written a slice at a time by that writer's next changes, so no
  one change pays for the whole rewrite; the new journal starts with a copy
  of the records written since that offset, and the snapshot says so
  (``continues``: that journal and offset), so a reader that finds the new
  snapshot beside either journal (between the two renames, or after a
  writer died there) reads the same state.  The old journal ends
  with a *seal* record naming the new journal, the new snapshot's identity
  and the offset in the new journal where the old one's records end, so a
  reader that was following the old journal moves on to the new one without
  re-reading anything.  The writer keeps the replaced files open and frees
  them a slice at a time once no reader holds them (a reader holds a
  shared ``flock`` on the snapshot it reads and the journal it follows).
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
import json.encoder
import json.scanner
import logging
import mmap
import os
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
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
# changes [digest, limit, rate or null], or a seal {"next", "snapshot"} and,
# from a compaction written in slices, "at").
_J_MAGIC = b"FLOVJRN1"
_J_HEAD = struct.Struct("<8s16sI")
_J_REC = struct.Struct("<II")  # the CRC-32 of the payload, started from its length
_READ_AHEAD = 1 << 16
_NOTHING, _APPLIED, _RELOAD = 0, 1, 2  # what reading the journal came to
# Compaction when the journal would pass both: a journal of small
# snapshots is not rewritten at every few changes.
JOURNAL_FACTOR = 2
JOURNAL_MIN_BYTES = 256 << 10
# A compaction writes the new snapshot a slice at a time, one slice after
# each change of the writer that started it: this many entries, and this
# many more per entry the change itself set or dropped, so the snapshot is
# done before the journal has grown by more than a quarter of it.  At
# about 0.3 us an entry, a slice costs a set() some 0.1 ms.
COMPACT_SLICE = 256
COMPACT_PER_CHANGE = 4
# The files a compaction replaced are freed by its writer, this much per
# change, once no reader holds them (each holds a shared flock on the
# snapshot it reads and the journal it follows): freeing 8 MB of tmpfs
# pages at once takes about a millisecond, which the last process to close
# them would pay, be it the writer at its rename or a worker at a check.
FREE_BYTES = 1 << 19
# Then the changes made while it was under way are folded in, this many
# (and two per entry changed) a change.
MERGE_SLICE = 64
_RETIRED_MAX = 8
_HEX = "0123456789abcdef"
_TOMB = -1  # an overlay's entry: dropped since the compaction started

# A (device, inode, size, mtime, ctime) of the snapshot: a file replaced or
# rewritten under us, by a compaction or by hand, shows as another identity.
_Ident = tuple[int, int, int, int, int]
# One change: the digest, the limit, the rate's text (None: removed).
_Change = tuple[str, str, str | None]
# A seal: the next journal's id, the new snapshot's identity, and where in
# the next journal the sealed one's records end (None: at its header).
_Seal = tuple[bytes, _Ident, int | None]


class _BadJournal(Exception):
    """A journal record that is not one of ours: never applied."""


class _Pairs:
    """The (limit, rate) pairs the entries use, numbered.

    An entry holds its pair's number, not a tuple or a Rate: the dict of
    100,000 entries then holds only str and int, which the cyclic garbage
    collector never tracks, so no collection walks it and no change leaves
    a container behind for the next collection to find.  A dashboard gives
    thousands of subjects a handful of rates, so the table stays small; it
    only grows (a number in use never changes meaning) and is built anew
    with each snapshot loaded whole."""

    __slots__ = ("ids", "limit", "text", "rate", "json")

    def __init__(self) -> None:
        self.ids: dict[str, dict[str, int]] = {}  # limit -> rate's text -> number
        self.limit: list[str] = []
        self.text: list[str] = []
        self.rate: list[Rate] = []
        self.json: list[str | None] = []  # the entry's JSON in a snapshot, once written

    def of(self, limit: str, text: str) -> int:
        by = self.ids.get(limit)
        if by is None:
            by = self.ids[limit] = {}
        else:
            found = by.get(text)
            if found is not None:
                return found
        rate = _rate(text)  # before any list grows: it may raise
        number = len(self.text)
        self.limit.append(limit)
        self.text.append(text)
        self.rate.append(rate)
        self.json.append(None)
        by[text] = number
        return number

    def fragment(self, number: int) -> str:
        found = self.json[number]
        if found is None:
            # (json.dumps of a str, without its Python-level wrappers)
            limit, text = _quoted(self.limit[number]), _quoted(self.text[number])
            found = self.json[number] = f'{{"limit":{limit},"rate":{text}}}'
        return found


class _Compaction:
    """A new snapshot being written aside, a slice after each change.

    It is the state at ``start`` in the journal ``source``: while it is
    written, the entries dict stays as it was then (the changes since go
    to the state's overlay, merged when it is done or dropped), so the
    slices iterate it as it is, with no copy, and the journal's records
    from ``start`` on, copied to the new journal, bring it to date."""

    __slots__ = ("fd", "tmp", "pid", "journal_id", "source", "start", "items", "total",
                 "done", "size", "fresh", "closed")

    def __init__(self, fd: int, tmp: str, journal_id: bytes, source: bytes, start: int,
                 entries: dict[str, int], size: int) -> None:
        self.fd, self.tmp, self.pid = fd, tmp, os.getpid()
        self.journal_id, self.source, self.start = journal_id, source, start
        self.items = iter(entries.items())
        self.total, self.done = len(entries), 0
        self.size = size  # bytes written to tmp
        self.fresh, self.closed = True, False  # started by this change; all written


class _TooBig(ValueError):
    pass


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
        # One tuple (salt, entries, pairs, limits, digests, overlay),
        # swapped whole on a full load, so a thread reading never pairs one
        # file's salt with another file's entries (or caches a digest under
        # the wrong salt).  A journal record changes the dicts in place:
        # copying them would cost every entry per change.
        self._state: _State = (os.urandom(16), {}, _Pairs(), frozenset(), {}, {})
        self._grown = 0  # entries in the overlay, less those it drops
        self._limit_counts: dict[str, int] = {}
        self.version = 0
        """Bumped whenever the overrides this process sees change: what a
        reader caches from them is good while it stays the same."""
        self._seen = -1
        self._write_lock = threading.Lock()  # flock does not exclude our own threads
        self._read_lock = threading.Lock()   # one thread applies the journal at a time
        self._fd = -1
        self._pid = os.getpid()
        self._mm: mmap.mmap | None = None
        self._view: memoryview | None = None
        # Where this process is in the files: the snapshot it loaded (its
        # identity and size), the journal that snapshot names (and the one
        # it continues, from an offset), and, once open, the journal read
        # (its id, where the snapshot's records start in it) and the offset
        # of the first record not applied.
        self._snap: _Ident | None = None
        self._snap_bytes = 0
        self._journal_id: bytes | None = None
        self._continues: tuple[bytes, int] | None = None
        self._jfd = -1
        self._jid: bytes | None = None
        self._jstart = 0
        self._joff = 0
        self._jbad: str | None = None   # why the journal stopped being read
        self._jtorn = False             # an unfinished record at its end
        self._buf: bytearray | None = None  # reused by every read of the journal
        self._compaction: _Compaction | None = None
        self._retry_at = 0  # a compaction that failed waits for this journal offset
        self._retired: list[list[int]] = []  # [fd, whether we hold its flock]: to free
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
        salt, entries, pairs, limits, digests, overlay = self._state
        if limit not in limits:
            return None
        # Digests cached by limit, then subject: no tuple key per subject
        # seen, which the garbage collector would track.
        by = digests.get(limit)
        if by is None:
            by = digests[limit] = {}
        digest = by.get(subject)
        if digest is None:
            if len(by) >= 4096:
                by.clear()
            digest = by[subject] = _fingerprint(salt, limit, subject)
        if overlay:  # a compaction under way in this process
            number = overlay.get(digest)
            if number is None:
                number = entries.get(digest)
            elif number < 0:
                return None
        else:
            number = entries.get(digest)
        return None if number is None else pairs.rate[number]

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
        return len(self._state[1]) + self._grown

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
        for fd, _ in self._retired:
            os.close(fd)
        self._retired = []

    def __repr__(self) -> str:
        return f"<Overrides {self._path or 'in-process'} entries={len(self)}>"

    # -- internals: the state in memory --------------------------------------------

    def _install(self, salt: bytes, entries: dict[str, int], pairs: _Pairs) -> None:
        """Replace the whole state (a snapshot was loaded)."""
        counts: dict[str, int] = {}
        for number, n in Counter(entries.values()).items():
            limit = pairs.limit[number]
            counts[limit] = counts.get(limit, 0) + n
        digests = self._state[4] if salt == self._state[0] else {}
        self._limit_counts = counts
        self._grown = 0
        self._state = (salt, entries, pairs, frozenset(counts), digests, {})
        self._changed()

    def _apply(self, changes: Sequence[Sequence[Any]], existed: list[bool] | None = None
               ) -> None:
        """Apply one batch of (digest, limit, rate or None) in place; with
        ``existed``, append whether each digest had an entry."""
        salt, entries, pairs, limits, digests, overlay = self._state
        counts = self._limit_counts
        # While a compaction iterates the entries, they stay as they were;
        # then, until its overlay is folded in, changes go on to the overlay.
        into = overlay if self._compaction is not None or overlay else entries
        new_limits = False
        for fp, limit, rate in changes:
            if overlay:
                old = overlay.get(fp)
                if old is None:
                    old = entries.get(fp)
                elif old < 0:
                    old = None
            else:
                old = entries.get(fp)
            if existed is not None:
                existed.append(old is not None)
            # Overwritten, not dropped and added: a thread reading between
            # the two would see no override for a subject that keeps one.
            if rate is not None:
                by = pairs.ids.get(limit)
                number = None if by is None else by.get(rate)
                into[fp] = pairs.of(limit, rate) if number is None else number
                if limit in counts:
                    counts[limit] += 1
                else:
                    counts[limit] = 1
                    new_limits = True
                if old is None and into is overlay:
                    self._grown += 1
            elif old is not None:
                if into is entries:
                    del entries[fp]
                else:
                    overlay[fp] = _TOMB
                    self._grown -= 1
            if old is not None:
                was = pairs.limit[old]
                left = counts[was] - 1
                if left:
                    counts[was] = left
                else:
                    del counts[was]
                    new_limits = True
        if new_limits:
            self._state = (salt, entries, pairs, frozenset(counts), digests, overlay)
        self._changed()

    def _merge(self, count: int = -1) -> None:
        """Fold ``count`` of the overlay's entries (all: -1) into the entries,
        which no compaction iterates any more.  Each costs a store into a
        dict of 100,000, cache misses and all (some 0.7 us): a compaction's
        worth at once would cost the change that ends it 0.3 ms."""
        entries, overlay = self._state[1], self._state[5]
        while overlay and count:
            count -= 1
            # Stored before it leaves the overlay: a thread reading between
            # the two finds the same value in either, never an older one.
            fp = next(reversed(overlay))
            number = overlay[fp]
            had = fp in entries
            if number < 0:
                if had:
                    del entries[fp]
                    self._grown += 1
            else:
                entries[fp] = number
                if not had:
                    self._grown -= 1
            overlay.popitem()

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
            salt, entries, pairs, journal_id, continues, ident, size = _read(path)
        except FileNotFoundError:
            # Removed: no overrides, and a new salt for the next file.
            self._detach()
            self._snap, self._snap_bytes, self._journal_id = None, 0, None
            self._continues = None
            self._install(os.urandom(16), {}, _Pairs())
            return
        self._detach()
        self._snap, self._snap_bytes, self._journal_id = ident, size, journal_id
        self._continues = continues
        self._install(salt, entries, pairs)
        self._attach()

    def _detach(self, retire: bool = False) -> None:
        self._drop_compaction()  # it continues this journal: no other
        if self._jfd >= 0:
            if retire:
                self._retire(self._jfd)
            else:
                os.close(self._jfd)
        self._jfd, self._jid, self._jstart, self._joff = -1, None, 0, 0
        self._jbad, self._jtorn, self._retry_at = None, False, 0

    def _attach(self, at: int | None = None) -> int:
        """Open the journal the loaded snapshot names (from ``at``, where a
        seal says its records start; else from its header), or the one it
        continues (from the offset it names), and apply it.  Returns what
        :meth:`_follow` does (nothing, when there is none to open)."""
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
        if magic != _J_MAGIC or zlib.crc32(head[:24]) != crc or not _hold(fd):
            # (Not held: a journal replaced, being freed by its writer.)
            os.close(fd)
            return _NOTHING
        if jid == self._journal_id:
            start = _J_HEAD.size
            offset = start if at is None else at
        elif self._continues is not None and jid == self._continues[0]:
            # The journal the snapshot was written from, still in place: a
            # compaction that renamed the snapshot and not (yet) its new
            # journal.  Its records from the snapshot's offset are those
            # the new journal starts with.
            start = offset = self._continues[1]
        else:
            # Not the snapshot's journal: the old one still, while a
            # synchronous compaction renames its files (the snapshot then
            # holds every change it had), or one left by a writer that
            # died then.
            os.close(fd)
            return _NOTHING
        self._jfd, self._jid, self._jstart, self._joff = fd, jid, start, offset
        self._jbad, self._jtorn = None, False
        if offset > _J_HEAD.size and offset > os.fstat(fd).st_size:
            self._journal_refused(f"it is shorter than the {offset} bytes its snapshot or "
                                  f"seal says it has")
            return _NOTHING
        return self._follow()

    def _follow(self) -> int:
        """Apply the journal's records after our offset, and follow a seal
        to the next journal.  Returns _NOTHING (no new record), _APPLIED, or
        _RELOAD: the snapshot must be loaded whole (sealed for one no longer
        there, or replaced while this process was far behind)."""
        assert self._path is not None
        fd, start = self._jfd, self._joff
        buf = self._buf
        if buf is None:
            buf = self._buf = bytearray(_READ_AHEAD)
        # One call into a buffer kept for it: no fstat and no 64 KiB
        # allocation (and its page faults) at each change read.
        n = os.preadv(fd, [buf], start)
        data: bytes | bytearray = buf
        if n == _READ_AHEAD:
            size = os.fstat(fd).st_size
            if size > MAX_FILE_BYTES:
                self._journal_refused(f"it is {size} bytes, more than {MAX_FILE_BYTES}")
                return _NOTHING
            if size - start > self._snap_bytes and _ident(self._path) != self._snap:
                return _RELOAD  # reading the snapshot costs less than its journal
            data = bytes(buf) + os.pread(fd, size - start - n, start + n)
            n = len(data)
        pos, got = 0, _NOTHING
        while pos + _J_REC.size <= n:
            length, crc = _J_REC.unpack_from(data, pos)
            end = pos + _J_REC.size + length
            if length > MAX_FILE_BYTES:
                self._joff = start + pos
                self._journal_refused(f"a record at offset {self._joff} claims {length} bytes")
                return got
            if end > n:
                break
            payload = data[pos + _J_REC.size:end]
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
            next_id, sealed, at = record
            assert self._path is not None
            if next_id == self._jid or _ident(self._path) != sealed:
                return _RELOAD  # replaced again since (or a loop)
            self._detach()
            self._snap, self._journal_id = sealed, next_id
            self._snap_bytes, self._continues = sealed[2], None
            if self._attach(at) == _RELOAD:
                return _RELOAD
            if self._jfd < 0 and _ident(self._path) != sealed:
                # The next journal is gone already, with the snapshot it
                # followed: this reader is two compactions behind.
                return _RELOAD
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
            existed: list[bool] = []
            if self._path is None or self._view is None:
                salt = self._state[0]
                self._apply([(_fingerprint(salt, lim, sub), lim, r) for lim, sub, r in batch],
                            existed)
                return existed
            if self._pid != os.getpid():
                # Forked after opening (gunicorn --preload): the inherited
                # descriptor shares its open file, and so its flock, with the
                # parent and siblings.  A lock of our own needs our own open.
                os.close(self._fd)
                self._fd = os.open(files_of(self._path)[1], os.O_RDWR | os.O_CLOEXEC)
                self._pid = os.getpid()
                with self._read_lock:
                    self._drop_compaction()  # the parent's, in its file
                for fd, _ in self._retired:  # the parent's to free
                    os.close(fd)
                self._retired = []
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                with self._read_lock:
                    self._commit_locked(batch, existed)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            # One of them, not two: none lengthens the change that puts a
            # compaction in place.
            if self._compaction is not None:
                self._compact_some(COMPACT_SLICE + COMPACT_PER_CHANGE * len(batch))
            elif self._state[5]:
                with self._read_lock:
                    self._merge(MERGE_SLICE + 2 * len(batch))
            elif self._retired:
                self._free_some()
            return existed

    def _locked(self) -> _Flock:
        return _Flock(self._fd)

    def _commit_locked(self, batch: list[tuple[str, str, str | None]],
                       existed: list[bool]) -> None:
        path = self._path
        assert path is not None
        try:
            self._sync(writer=True)  # the latest, not our copy
        except _BAD_FILE as e:
            raise ConfigurationError(
                f"{path}: cannot update the overrides, the files are not readable as "
                f"such ({_short(e)}); fix or remove them") from None
        salt, entries, pairs = self._state[:3]
        changes = [(_fingerprint(salt, lim, sub), lim, r) for lim, sub, r in batch]
        record = _record([list(c) for c in changes])
        if self._must_compact(len(record)):
            self._drop_compaction()
            self._merge()
            existed.extend(fp in entries for fp, _, _ in changes)
            new = dict(entries)
            for fp, limit, rate in changes:
                if rate is None:
                    new.pop(fp, None)
                else:
                    new[fp] = pairs.of(limit, rate)
            self._compact(salt, new, pairs, record)
        else:
            self._drop_torn()
            _write_all(self._jfd, record, self._joff)
            self._joff += len(record)
            self._apply(changes, existed)
            if (self._compaction is None and not self._state[5]
                    and self._joff >= self._retry_at
                    and self._joff - self._jstart > self._journal_budget()):
                self._start_compaction()
        self._bump()

    def _bump(self) -> None:
        gen = self._generation.value() + 1
        self._generation.set(gen)
        self._seen = gen

    def _drop_torn(self) -> None:
        if self._jtorn:
            # Under the lock no append is under way: what follows the
            # last whole record is a dead writer's, never applied.
            log.warning("fastlimit: %s ends in an unfinished record; dropping it",
                        files_of(self._path or "")[2])
            os.ftruncate(self._jfd, self._joff)
            self._jtorn = False

    def _must_compact(self, adding: int) -> bool:
        """Whether this change is written as a new snapshot (and journal)
        at once, rather than appended."""
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
        # Past the budget a compaction in slices is started (or under way);
        # only if it cannot keep up (it failed) is the journal folded now.
        return self._joff + adding > MAX_FILE_BYTES // 2

    def _journal_budget(self) -> int:
        return min(max(JOURNAL_MIN_BYTES, JOURNAL_FACTOR * self._snap_bytes),
                   MAX_FILE_BYTES // 2)

    def _compact(self, salt: bytes, entries: dict[str, int], pairs: _Pairs,
                 record: bytes) -> None:
        """Write ``entries`` (the state with the change ``record`` applied)
        as a new snapshot, with an empty journal after it, at once."""
        path, _, jpath = files_of(self._path or "")
        journal_id = os.urandom(16)
        data = (_snapshot_head(salt, journal_id, None)
                + ",".join([f'"{fp}":{pairs.fragment(n)}' for fp, n in entries.items()])
                + "}}").encode()
        if len(data) > MAX_FILE_BYTES:
            raise ConfigurationError(
                f"{path}: {len(entries)} overrides would take {len(data)} bytes, more than "
                f"an overrides file's {MAX_FILE_BYTES}; drop some first")
        tmp, jtmp = f"{path}.{os.getpid()}.tmp", f"{jpath}.{os.getpid()}.tmp"
        _write_aside(tmp, data)
        try:
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
            _write_all(jfd, _journal_head(journal_id), 0)
            os.fsync(jfd)
            if sealed:
                _write_all(self._jfd, record, self._joff)
                self._joff += len(record)
            old = _open_retiring(path)
            # The snapshot first: until the journal follows it, a reader
            # finds the old journal's id, not the new, and uses the
            # snapshot alone, which holds every change.
            try:
                os.replace(tmp, path)
            except BaseException:
                if old >= 0:
                    os.close(old)
                raise
            if old >= 0:
                self._retire(old)
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
            self._seal(journal_id, ident, None)
        self._detach(retire=True)
        _hold(jfd)
        self._jfd, self._jid, self._jstart = jfd, journal_id, _J_HEAD.size
        self._joff = _J_HEAD.size
        self._snap, self._snap_bytes, self._journal_id = ident, len(data), journal_id
        self._continues = None
        self._install(salt, entries, pairs)

    def _seal(self, journal_id: bytes, ident: _Ident, at: int | None) -> None:
        seal: dict[str, object] = {"next": journal_id.hex(), "snapshot": list(ident)}
        if at is not None:
            seal["at"] = at
        try:
            _write_all(self._jfd, _record(seal), self._joff)
        except OSError as e:  # they load the new snapshot whole instead
            log.warning("fastlimit: cannot seal %s (%s)", files_of(self._path or "")[2],
                        _short(e))

    # -- internals: compaction in slices -------------------------------------------

    def _start_compaction(self) -> None:
        """Begin a new snapshot of the state as it is now, at ``_joff``
        (under the lock, after this change's append): its head now, its
        entries by the next changes' slices."""
        path = self._path
        assert path is not None and self._jid is not None
        salt, entries = self._state[0], self._state[1]
        journal_id = os.urandom(16)
        tmp = f"{path}.{os.getpid()}.tmp"
        head = _snapshot_head(salt, journal_id, (self._jid, self._joff)).encode()
        try:
            fd = _create_aside(tmp)
            try:
                _write_all(fd, head, 0)
            except BaseException:
                os.close(fd)
                _unlink(tmp)
                raise
        except OSError as e:
            self._compaction_failed(e)
            return
        self._compaction = _Compaction(fd, tmp, journal_id, self._jid, self._joff, entries,
                                       len(head))

    def _compact_some(self, count: int) -> None:
        """Write the next ``count`` entries of the snapshot under way, and
        put it in place once they are all written.  Its failure fails no
        change (each is in the journal already): it is logged, and tried
        again once the journal has grown by half its budget."""
        compaction = self._compaction
        assert compaction is not None
        try:
            # One step a change, none with the change that starts it: each
            # costs a set() no more than one slice.
            if compaction.fresh:
                compaction.fresh = False
                return
            if not compaction.closed:
                with self._read_lock:  # this thread's reads of the entries
                    if self._compaction is compaction:
                        self._write_slice(compaction, count)
                return
            os.fsync(compaction.fd)  # the rename must not land before the data
            with self._locked(), self._read_lock:
                if self._finish(compaction):
                    self._bump()
        except (OSError, _TooBig) as e:
            with self._read_lock:
                if self._compaction is compaction:
                    self._compaction_failed(e)

    def _write_slice(self, compaction: _Compaction, count: int) -> None:
        pairs = self._state[2]
        fragments, fragment = pairs.json, pairs.fragment
        parts = [f'"{fp}":{fragments[n] or fragment(n)}'
                 for fp, n in islice(compaction.items, count)]
        text = ",".join(parts)
        if compaction.done and parts:
            text = "," + text
        compaction.done += len(parts)
        closed = compaction.done >= compaction.total
        if closed:
            text += "}}"
        data = text.encode()
        if compaction.size + len(data) > MAX_FILE_BYTES:
            raise _TooBig(f"{compaction.total} overrides take more than an overrides file's "
                          f"{MAX_FILE_BYTES} bytes; drop some")
        _write_all(compaction.fd, data, compaction.size)
        # On a disk, start writing it back now (tmpfs ignores the advice):
        # the fsync before the rename then waits for the last slices only.
        os.posix_fadvise(compaction.fd, compaction.size, len(data), os.POSIX_FADV_DONTNEED)
        compaction.size += len(data)
        compaction.closed = closed

    def _finish(self, compaction: _Compaction) -> bool:
        """Put the written snapshot in place (under the lock), with a new
        journal holding the records since its start.  Returns whether the
        files changed."""
        path, _, jpath = files_of(self._path or "")
        try:
            self._sync(writer=True)
        except _BAD_FILE as e:
            log.warning("fastlimit: not compacting the overrides: %s", _short(e))
            self._drop_compaction()
            return False
        if self._compaction is not compaction:
            return False  # the journal moved on (another writer compacted it)
        if self._jbad is not None or self._jid != compaction.source \
                or not _same_file(self._jfd, jpath):
            self._drop_compaction()  # the next change writes a new snapshot at once
            return False
        self._drop_torn()
        end = self._joff
        tail = os.pread(self._jfd, end - compaction.start, compaction.start)
        if len(tail) != end - compaction.start:
            raise OSError(f"read {len(tail)} of the {end - compaction.start} bytes of "
                          f"{jpath} from {compaction.start}")
        jtmp = f"{jpath}.{os.getpid()}.tmp"
        jfd = _create_aside(jtmp)
        old, renamed = -1, False
        try:
            # Not fsynced, as no append is: a crash of the machine may lose
            # these records, and the snapshot alone is the state at their
            # start, never half of a change.
            _write_all(jfd, _journal_head(compaction.journal_id) + tail, 0)
            old = _open_retiring(path)
            os.replace(compaction.tmp, path)
            renamed = True
            # Between the two renames the snapshot finds this journal still
            # at its name: it continues it, from the offset it names.
            os.replace(jtmp, jpath)
        except BaseException:
            os.close(jfd)
            _unlink(jtmp)
            if renamed:
                self._snap = None  # reload it (with the journal it continues)
            raise
        finally:
            if old >= 0:
                if renamed:
                    self._retire(old)
                else:
                    os.close(old)
        _hold(jfd)
        ident = _ident(path)
        assert ident is not None
        at = _J_HEAD.size + len(tail)
        self._seal(compaction.journal_id, ident, at)
        # The state is that of the new files already: nothing to load (and
        # the overlay is folded in by the next changes).
        os.close(compaction.fd)
        self._compaction = None
        self._detach(retire=True)
        self._jfd, self._jid, self._jstart, self._joff = jfd, compaction.journal_id, \
            _J_HEAD.size, at
        self._snap, self._snap_bytes = ident, compaction.size
        self._journal_id, self._continues = compaction.journal_id, (compaction.source,
                                                                    compaction.start)
        return True

    def _compaction_failed(self, error: BaseException) -> None:
        log.warning("fastlimit: cannot write a new snapshot of the overrides at %s (%s); "
                    "the journal keeps every change meanwhile", self._path, _short(error))
        self._drop_compaction()
        self._retry_at = self._joff + self._journal_budget() // 2

    def _drop_compaction(self) -> None:
        compaction, self._compaction = self._compaction, None
        if compaction is None:
            return
        os.close(compaction.fd)
        if compaction.pid == os.getpid():  # a forked child's is its parent's
            _unlink(compaction.tmp)

    # -- internals: freeing replaced files -----------------------------------------

    def _retire(self, fd: int) -> None:
        """Keep ``fd`` (a file no longer at its name) open, to free it by
        slices once no reader holds it."""
        self._retired.append([fd, 0])
        if len(self._retired) > _RETIRED_MAX:  # held for good (a stopped worker's)
            os.close(self._retired.pop(0)[0])

    def _free_some(self) -> None:
        """Free up to FREE_BYTES of the first retired file no reader holds."""
        for entry in self._retired:
            fd, held = entry
            try:
                if not held:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a reader is on it still
                    entry[1] = 1
                size = max(0, os.fstat(fd).st_size - FREE_BYTES)
                os.ftruncate(fd, size)
            except OSError:
                size = 0
            if size == 0:
                os.close(fd)
                self._retired.remove(entry)
            return


class _Flock:
    """The writers' lock: an exclusive flock on the counter file."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


# salt, entries (digest -> pair number), pairs, the limits with entries,
# cached digests (limit -> subject -> digest), the overlay (digest -> pair
# number or _TOMB: changes while a compaction iterates the entries)
_State = tuple[bytes, dict[str, int], _Pairs, frozenset[str], dict[str, dict[str, str]],
               dict[str, int]]


def _fingerprint(salt: bytes, limit: str, subject: str) -> str:
    h = hashlib.blake2b(key=salt, digest_size=16)
    h.update(limit.encode())
    h.update(b"\0")
    h.update(subject.encode())
    return h.hexdigest()


def _is_digest(value: object) -> bool:
    # 32 lowercase hex digits, as _fingerprint writes them: a digest is
    # written into a snapshot as it is, never quoted.
    return type(value) is str and len(value) == 32 and not value.strip(_HEX)


def _snapshot_head(salt: bytes, journal_id: bytes, continues: tuple[bytes, int] | None
                   ) -> str:
    """A snapshot's JSON up to its entries (which end with ``}}``)."""
    head: dict[str, object] = {"format": _FORMAT, "version": _VERSION, "salt": salt.hex(),
                               "journal": journal_id.hex()}
    if continues is not None:
        head["continues"] = {"journal": continues[0].hex(), "offset": continues[1]}
    return json.dumps(head, separators=(",", ":"))[:-1] + ',"overrides":{'


def _journal_head(journal_id: bytes) -> bytes:
    head = _J_MAGIC + journal_id
    return head + struct.pack("<I", zlib.crc32(head))


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


def _read(path: str) -> tuple[bytes, dict[str, int], _Pairs, bytes | None,
                              tuple[bytes, int] | None, _Ident, int]:
    """The snapshot: salt, entries and their pairs, the id of its journal
    (and the journal and offset it continues), its identity and size."""
    # Overrides set any subject's rate: like a table, read them only from a
    # regular file of our own, never through a link, and without blocking
    # (a FIFO planted at the path would hold every worker at its open).
    for _ in range(8):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            check_owner(fd, path)
        except BaseException:
            os.close(fd)
            raise
        # Held while it is read, and still the one at the path once held:
        # a snapshot replaced meanwhile is freed (truncated) by its writer.
        if _hold(fd) and _same_file(fd, path):
            break
        os.close(fd)
    else:
        raise OSError(f"{path} was replaced 8 times while it was opened")
    try:
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
    entries: dict[str, int] = {}
    pairs = _Pairs()
    of = pairs.of
    for fp, e in given.items():
        rate, limit = e["rate"], e["limit"]
        if not isinstance(rate, str):
            raise TypeError("an override's rate must be a string")
        if not isinstance(limit, str):
            raise TypeError("an override's limit must be a string")
        if not _is_digest(fp):
            raise ValueError(f"an override's key must be a digest, got {fp!r:.80}")
        entries[fp] = of(limit, rate)
    journal_id = continues = None
    if data["version"] >= 2:
        journal_id = _journal_id(data["journal"])
        if "continues" in data:
            c = data["continues"]
            offset = c["offset"]
            if type(offset) is not int or not _J_HEAD.size <= offset <= MAX_FILE_BYTES:
                raise ValueError(f"{path} continues a journal from offset {offset!r:.80}")
            continues = (_journal_id(c["journal"]), offset)
    ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return bytes.fromhex(data["salt"]), entries, pairs, journal_id, continues, ident, len(raw)


def _journal_id(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"a journal id is a hex string, got {text!r:.80}")
    journal_id = bytes.fromhex(text)
    if len(journal_id) != 16:
        raise ValueError(f"a journal id is 16 bytes, got {len(journal_id)}")
    return journal_id


_quoted: Any = json.encoder.encode_basestring_ascii
# The C scanner itself: json.loads's wrappers (its type checks, the
# whitespace regex on either side) cost as much again on a record.
_scan: Any = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _record(payload: object) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _J_REC.pack(len(body), zlib.crc32(body, len(body))) + body


_SEAL_KEYS = ({"next", "snapshot"}, {"next", "snapshot", "at"})


def _parse_record(payload: bytes | bytearray) -> list[list[Any]] | _Seal:
    """A batch of changes (as parsed: lists [digest, limit, rate]), or a
    seal; every field checked before any is applied."""
    try:
        text = payload.decode("utf-8")
        data: Any
        try:
            data, end = _scan(text, 0)
        except StopIteration:
            raise ValueError("a record is JSON") from None
        if end != len(text):
            raise ValueError("a record is one JSON value")
        if type(data) is list:
            for c in data:
                if type(c) is not list or len(c) != 3:
                    raise ValueError(f"a change is [digest, limit, rate], got {c!r:.80}")
                fp, limit, rate = c
                if not _is_digest(fp) or type(limit) is not str or not limit:
                    raise ValueError(f"a change's digest and limit are strings, got {c!r:.80}")
                if rate is not None:
                    if type(rate) is not str:
                        raise ValueError(f"a change's rate is a string or null, got {rate!r:.80}")
                    if rate not in _RATES:
                        _rate(rate)
            return data
        if type(data) is dict and data.keys() in _SEAL_KEYS:
            next_id = bytes.fromhex(data["next"])
            ident = tuple(data["snapshot"])
            at = data.get("at")
            if len(next_id) != 16 or len(ident) != 5 or {type(v) for v in ident} != {int}:
                raise ValueError("a seal names a journal id and a file identity")
            if at is not None and (type(at) is not int
                                   or not _J_HEAD.size <= at <= MAX_FILE_BYTES):
                raise ValueError(f"a seal's offset is out of range: {at!r:.80}")
            return next_id, ident, at
        raise ValueError("a record is a list of changes or a seal")
    except (ValueError, TypeError, KeyError, RecursionError, ConfigurationError) as e:
        raise _BadJournal(_short(e)) from None


def _same_file(fd: int, path: str) -> bool:
    try:
        there = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)


def _hold(fd: int) -> bool:
    """Take a reader's shared flock on a snapshot or journal: its writer
    frees the file only once none holds it.  False: the file is being
    freed (it was replaced)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open_retiring(path: str) -> int:
    """The snapshot about to be replaced, held open (-1: none there), so
    that the rename does not free it (its writer does, later, by slices)."""
    try:
        # (writable: freed by ftruncate)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return -1
    try:
        check_owner(fd, path)
    except BaseException:
        os.close(fd)
        return -1
    return fd


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
