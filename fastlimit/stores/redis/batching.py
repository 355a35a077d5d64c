"""Auto-batching for the Redis backends: on by default for one server or a
Sentinel primary (``batch=None``; see :func:`wanted`), ``batch=False`` to
send each call through redis-py's command layer instead.

Concurrent script calls of one backend's threads (or coroutines) share
round trips: the first caller to find no round trip in flight sends its call
at once, alone (a lone check waits for nothing).  Callers that arrive while
a round trip is in flight queue up; when it ends, the next round trip
carries up to ``batch_size`` queued calls in one pipeline of EVALSHAs.  So
a call waits at most for the round trip in flight, and the calls per round
trip grow with the load, not with a timer (no call ever waits for
companions).  With threads, the thread whose round trip ended sends the
next pipeline, then wakes its callers and hands reading the replies to the
first queued thread (so Redis works while the woken threads wait for the
GIL); with coroutines, the round trips of queued calls are a task of the
backend (never at the mercy of one caller's cancellation).

Every call stays the script call it was, run alone and atomically by
Redis, so decisions are those of the unbatched backend: a pipeline only
saves the round trips between them.  Calls of one thread stay in order
(a thread has one call at a time).  Failures are the backend's
(:mod:`.common`): a node marked down skips every call of the batch (each
counted in ``skipped``); a connection error or a timeout is retried once on
a fresh connection (not a refund that timed out, which may have run), then
fails every call of the round trip, each answered by its own failure
policy and counted in ``errors`` and its kind, while the node is marked
down once (one attempt failed, however many calls it carried); a READONLY
reply is retried once as unbatched; any other error reply (OOM...) fails
its own call only; NOSCRIPT loads the script and sends its calls again.  A
full pool (no connection within ``timeout``) fails the round trip's calls
as ``pool_timeouts``, which deny.

A round trip is the sans-I/O plan :func:`round_trip` (as :mod:`.plans` are
the backends' operations): it packs the calls' EVALSHAs itself (arguments
packed once per distinct argument list) and parses their replies itself
(:class:`Replies`), and the two drivers, :class:`Batcher` (threads) and
:class:`AsyncBatcher` (asyncio), only move bytes on one connection of the
backend's pool, which the batcher keeps (one round trip is in flight at a
time).  A lone call goes the same way, so it costs less client time than an
unbatched call through redis-py's command layer.

``stats().batches`` counts the round trips of the batcher (a NOSCRIPT reply
costs one more, to load the script, and one to send its calls again, not
counted) and ``stats().batched`` the calls they carried, each also counted
in ``calls``, ``errors`` or ``skipped`` as unbatched.  Batching needs one
server (or a Sentinel master); a Redis Cluster's calls go to the nodes of
their slots, which one pipeline does not do, so a cluster's backend does not
batch by default and ``batch=True`` with a cluster is refused.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

from fastlimit.errors import ConfigurationError
from fastlimit.stores.redis.common import (
    NoScriptError,
    RedisError,
    failure_kind,
    retry_safe,
)

if TYPE_CHECKING:
    from fastlimit.stores.redis.aio import AsyncRedisBackend
    from fastlimit.stores.redis.common import BackendBase
    from fastlimit.stores.redis.sync import RedisBackend

__all__ = ["DEFAULT_BATCH_SIZE", "AsyncBatcher", "Batcher", "Replies", "round_trip", "wanted"]

# Calls per round trip at most: a pipeline is sent whole, and its replies
# are read before any of its callers is answered.
DEFAULT_BATCH_SIZE = 128
_READ_SIZE = 65536
# distinct argument lists whose packing is kept (a fixed clock's times make
# a new one per call: the cache is then cleared when full, never grown)
_ARGS_CACHE = 4096


def check_batch_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise ConfigurationError(f"batch_size must be an int from 1 to 10000, got {value!r}")
    return value


def wanted(batch: bool | None, cluster: bool) -> bool:
    """Whether a backend batches for a ``batch=`` of its constructor: as
    given, or (None, the default) unless its client is a cluster's.  A lone
    call costs less client time batched than through redis-py's command
    layer, so nothing is lost where batching is allowed."""
    if batch is None:
        return not cluster
    if not isinstance(batch, bool):
        raise ConfigurationError(f"batch must be True, False or None (batch where possible), "
                                 f"got {batch!r}")
    return batch


def refuse_cluster(backend: BackendBase) -> None:
    if backend._cluster:
        raise ConfigurationError(
            "batch=True needs one Redis server (or a Sentinel master): a cluster's calls "
            "go to the nodes of their slots")


class Call:
    """One script call waiting for its reply (or, for threads, for its turn
    to lead): ``done`` is the driver's (a held lock, or a future)."""

    __slots__ = ("args", "batch", "done", "error", "keys", "pending", "reply", "script")

    def __init__(self, script: str, keys: list[bytes], args: list[bytes], done: Any) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.reply: list[int] | None = None
        self.error: BaseException | None = None
        # set on the call whose thread is to lead the next round trip: its
        # batch, and that round trip, its pipeline sent, waiting for the replies
        self.batch: list[Call] | None = None
        self.pending: tuple[Trip, Op] | None = None
        self.done = done

    def result(self) -> list[int]:
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


class Coalescer:
    """Who sends the next round trip: the queue of one backend's calls.
    The same for both drivers; a lock, as threads share it."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = check_batch_size(batch_size)
        self._mutex = threading.Lock()
        self.queue: list[Call] = []
        self._busy = False  # a round trip is in flight (its end hands on)

    def arrive(self, call: Call) -> bool:
        """True: no round trip is in flight, ``call`` goes now; False: it is
        queued for the next one."""
        with self._mutex:
            if self._busy:
                self.queue.append(call)
                return False
            self._busy = True
            return True

    def next_batch(self) -> list[Call]:
        """At a round trip's end: the calls of the next one (empty: none
        queued, and no round trip is in flight any more)."""
        with self._mutex:
            nxt = self.queue[:self.batch_size]
            del self.queue[:self.batch_size]
            if not nxt:
                self._busy = False
            return nxt


# -- the wire: EVALSHAs packed, replies parsed -----------------------------------------


class Packer:
    """RESP bytes of a pipeline of EVALSHAs, without redis-py's command
    layer (its per-argument work costs more than the rest of a check)."""

    def __init__(self, backend: BackendBase) -> None:
        self._heads = {name: b"$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % s.sha.encode("ascii")
                       for name, s in backend._scripts.items()}
        self._args: dict[tuple[bytes, ...], tuple[int, bytes]] = {}

    def pack(self, calls: Sequence[Call]) -> bytes:
        out: list[bytes] = []
        cache = self._args
        for c in calls:
            key = tuple(c.args)
            packed = cache.get(key)
            if packed is None:
                if len(cache) >= _ARGS_CACHE:
                    cache.clear()
                packed = cache[key] = (len(key), b"".join(
                    [b"$%d\r\n%s\r\n" % (len(a), a) for a in key]))
            keys = c.keys
            n = len(keys)
            out.append(b"*%d\r\n%s$%d\r\n%d\r\n" % (3 + n + packed[0], self._heads[c.script],
                                                    len(b"%d" % n), n))
            for k in keys:
                out.append(b"$%d\r\n%s\r\n" % (len(k), k))
            out.append(packed[1])
        return b"".join(out)


class Replies:
    """The parser of ``n`` replies (sans-I/O: fed bytes as they come).  The
    scripts answer bulk strings; an error reply becomes redis-py's
    exception for it (NoScriptError, OutOfMemoryError...), to be answered
    by its call's failure policy; anything else is a protocol error."""

    __slots__ = ("n", "out", "rest")

    def __init__(self, n: int) -> None:
        self.n = n
        self.out: list[Any] = []
        self.rest = b""

    def feed(self, data: bytes) -> bool:
        """Parse ``data`` (the next bytes read); True once every reply is in."""
        if not data:
            raise RedisConnectionError("Connection closed by server.")
        buf = self.rest + data if self.rest else data
        out, n, end, pos = self.out, self.n, len(buf), 0
        while len(out) < n:
            nl = buf.find(b"\r\n", pos)
            if nl < 0:
                break
            kind = buf[pos]
            if kind == 36:  # $: a bulk string
                size = int(buf[pos + 1:nl])
                if size < 0:
                    out.append(None)
                    pos = nl + 2
                    continue
                stop = nl + 2 + size
                if stop + 2 > end:
                    break
                out.append(buf[nl + 2:stop])
                pos = stop + 2
            elif kind == 45:  # -: an error reply
                out.append(BaseParser.parse_error(  # type: ignore[no-untyped-call]
                    buf[pos + 1:nl].decode("utf-8", "replace")))
                pos = nl + 2
            elif kind == 43 or kind == 58:  # + or :, a status or an integer
                out.append(buf[pos + 1:nl])
                pos = nl + 2
            else:
                raise InvalidResponse(f"Protocol error, got {chr(kind)!r} as reply type byte")
        self.rest = buf[pos:]
        if len(out) == n and self.rest:
            raise InvalidResponse("Protocol error: more replies than commands")
        return len(out) == n


def parse_reply(reply: Any) -> list[int]:
    """A script's reply: its integers, space-separated in one string."""
    return [int(x) for x in reply.split()]


# -- one round trip, sans I/O --------------------------------------------------------

# What a round trip asks its driver to do, and what it is sent back:
SEND = "send"        # (SEND, bytes): send them -> None
RECV = "recv"        # (RECV, n): read n replies -> the replies
LOAD = "load"        # (LOAD, script name): SCRIPT LOAD it -> None
FRESH = "fresh"      # (FRESH, None): drop the connection (and the pool's idle ones) -> None
MEMORY = "memory"    # (MEMORY, None): check Redis's maxmemory-policy -> None
Op = tuple[Any, ...]
Trip = Generator[Op, Any, None]


def round_trip(backend: BackendBase, packer: Packer, batch: list[Call]) -> Trip:
    """One round trip of ``batch``'s calls: each call gets its ``reply`` or
    its ``error`` (a :class:`~.common.Failure`).  A failure to reach Redis
    is thrown in by the driver (RedisError or OSError)."""
    b = backend
    b._count("batches")
    b._count("batched", len(batch))
    node = b.address  # one server: every call's node (see BackendBase._node_of)
    skipped = b._skip(node)
    if skipped is not None:
        batch[0].error = skipped
        for c in batch[1:]:
            c.error = b._skip(node) or skipped  # each counted, as unbatched
        return
    try:
        replies = yield from _attempt(b, packer, batch)
    except (RedisError, OSError) as e:
        kind = failure_kind(e)
        again = [c for c in batch if retry_safe(c.script, c.args, kind)]
        if not (again and b._retries(node, kind)):
            _fail_all(b, batch, e, node)
            return
        if len(again) > 1:
            b._count("retries", len(again) - 1)  # one per call, as unbatched
        for c in batch:
            if c not in again:  # a refund that timed out may have run
                c.error = b._failure(e, node, mark=False)
        yield FRESH, None
        try:
            replies = yield from _attempt(b, packer, again)
        except (RedisError, OSError) as e2:
            _fail_all(b, again, e2, node)
            return
        batch = again
    answered = yield from _answer(b, packer, batch, replies, node)
    if answered and b._first_success():
        yield MEMORY, None


def _attempt(b: BackendBase, packer: Packer, batch: list[Call]) -> Generator[Op, Any, list[Any]]:
    """The batch's EVALSHAs in one pipeline: their replies, or each call's
    error reply (NOSCRIPT: the script is loaded and its calls sent again,
    one more round trip)."""
    yield SEND, packer.pack(batch)
    replies: list[Any] = yield RECV, len(batch)
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        b._count("noscript", len(missing))
        for name in sorted({batch[i].script for i in missing}):
            yield LOAD, name
        yield SEND, packer.pack([batch[i] for i in missing])
        again: list[Any] = yield RECV, len(missing)
        for i, r in zip(missing, again, strict=True):
            replies[i] = r
    return replies


def _answer(b: BackendBase, packer: Packer, batch: list[Call], replies: list[Any],
            node: str) -> Generator[Op, Any, bool]:
    """Each call's reply or failure; True if Redis answered any.  READONLY
    (a failover's demoted master) goes again once on a fresh connection,
    as unbatched."""
    ok = 0
    readonly: list[tuple[Call, BaseException]] = []
    for c, r in zip(batch, replies, strict=True):
        if isinstance(r, BaseException):
            if failure_kind(r) == "readonly":
                readonly.append((c, r))
            else:
                c.error = b._failure(r, node)
        else:
            ok += 1
            c.reply = parse_reply(r)
    answered = ok > 0
    if answered:
        b._success(node)  # (ends a marked-down period, counts one call)
        if ok > 1:
            b._count("calls", ok - 1)
    if readonly:
        again = [c for c, _r in readonly]
        if not b._retries(node, "readonly"):
            for c, r in readonly:
                c.error = b._failure(r, node)
            return answered
        if len(again) > 1:
            b._count("retries", len(again) - 1)
        yield FRESH, None
        try:
            replies2 = yield from _attempt(b, packer, again)
        except (RedisError, OSError) as e:
            _fail_all(b, again, e, node)
            return answered
        for c, r in zip(again, replies2, strict=True):
            if isinstance(r, BaseException):
                c.error = b._failure(r, node)
            else:
                b._success(node)
                answered = True
                c.reply = parse_reply(r)
    return answered


def _fail_all(b: BackendBase, batch: list[Call], e: BaseException, node: str) -> None:
    # one failed round trip marks its node down once, whatever it carried
    for i, c in enumerate(batch):
        c.error = b._failure(e, node, mark=i == 0)


# -- the drivers -----------------------------------------------------------------------


class Batcher:
    """Coalesces one sync backend's concurrent script calls into pipelines."""

    def __init__(self, backend: RedisBackend, batch_size: int) -> None:
        refuse_cluster(backend)
        self._backend = backend
        self._coalescer = Coalescer(batch_size)
        self.batch_size = self._coalescer.batch_size
        self._packer = Packer(backend)
        # the connection round trips go on (one at a time), and the
        # process it was taken in (a forked child takes its own)
        self._conn: Any = None
        _SYNC_BATCHERS.add(self)

    def _forked(self) -> None:
        # a round trip a thread of the parent had in flight has no thread
        # here: the child's calls must not queue behind it
        self._coalescer = Coalescer(self.batch_size)
        self._conn = None

    @property
    def _queue(self) -> list[Call]:
        return self._coalescer.queue

    def eval(self, script: str, keys: list[bytes], args: list[bytes]) -> list[int]:
        """The reply of one script call, as ``RedisBackend._eval``'s: a list
        of ints, or :class:`~.common.Failure` raised."""
        done = threading.Lock()  # held until answered or handed the lead
        done.acquire()
        call = Call(script, keys, args, done)
        if not self._coalescer.arrive(call):
            done.acquire()
            if call.batch is None:
                return call.result()
            self._lead(call.batch, call.pending)
        else:
            self._lead([call], None)
        return call.result()

    def _lead(self, batch: list[Call], pending: tuple[Trip, Op] | None) -> None:
        try:
            if pending is None:
                self._step(round_trip(self._backend, self._packer, batch), until_recv=False)
            else:
                trip, op = pending
                self._step(trip, op=op, until_recv=False)
        except BaseException as e:  # noqa: BLE001 - every waiter must wake, answered
            self._unanswered(batch, e)
            raise
        finally:
            try:
                self._hand_on()
            finally:
                for c in batch[1:]:  # (batch[0] is the leader's own call)
                    c.done.release()

    def _hand_on(self) -> None:
        """Start the next round trip, if calls are queued: its pipeline is
        sent here, before this one's callers wake (they and the next leader
        then wait for the GIL, not Redis for them), and the first of its
        callers is handed the rest (reading the replies)."""
        while True:
            nxt = self._coalescer.next_batch()
            if not nxt:
                return
            trip = round_trip(self._backend, self._packer, nxt)
            try:
                op = self._step(trip, until_recv=True)
            except BaseException as e:  # noqa: BLE001 - its callers must wake, answered
                self._unanswered(nxt, e)
                op = None
                more = self._coalescer.next_batch()
                while more:  # nor may the calls queued behind wait for a leader
                    self._unanswered(more, e)
                    for c in more:
                        c.done.release()
                    more = self._coalescer.next_batch()
                raise
            finally:
                if op is None:  # answered already (skipped, failed to send): no leader
                    for c in nxt:
                        c.done.release()
            if op is not None:
                nxt[0].batch = nxt
                nxt[0].pending = (trip, op)
                nxt[0].done.release()
                return

    @staticmethod
    def _unanswered(batch: list[Call], e: BaseException) -> None:
        for c in batch:
            if c.reply is None and c.error is None:
                c.error = e

    def _step(self, trip: Trip, op: Op | None = None, until_recv: bool = False) -> Op | None:
        """Run ``trip``, starting with ``op`` (None: from its start); with
        ``until_recv``, stop at its first RECV and return it (not run).
        None: the round trip is over, every call answered."""
        b = self._backend
        result: Any = None
        error: BaseException | None = None
        while True:
            if op is not None:
                try:
                    if op[0] is SEND:
                        self._send(op[1])
                    elif op[0] is RECV:
                        result = self._recv(op[1])
                    elif op[0] is FRESH:
                        self._drop()
                        b._fresh()
                    else:
                        # through the client, on a connection of the pool:
                        # the batcher's goes back first (with
                        # max_connections=1 it is the only one)
                        self.close()
                        if op[0] is LOAD:
                            b._client.script_load(b._scripts[op[1]].script)
                        else:
                            b._check_memory_policy()
                except (RedisError, OSError) as e:
                    error = e
            try:
                op = trip.throw(error) if error is not None else trip.send(result)
            except StopIteration:
                return None
            result, error = None, None
            if until_recv and op[0] is RECV:
                return op

    def _send(self, payload: bytes) -> None:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._backend._client.connection_pool.get_connection()
        if conn._sock is None:
            # connect() itself: send_packed_command's own connecting skips a
            # Sentinel connection's asking for the primary, so after a
            # failover it would go back to the demoted one
            conn.connect()
        # (redis-py disconnects on a failure to send)
        conn.send_packed_command([payload], check_health=False)

    def _recv(self, n: int) -> list[Any]:
        conn = self._conn
        replies = Replies(n)
        try:
            sock = conn._sock
            if sock is None:
                raise RedisConnectionError("Connection closed.")
            try:
                while not replies.feed(sock.recv(_READ_SIZE)):
                    pass
            except TimeoutError:
                raise RedisTimeoutError("Timeout reading from socket") from None
            except OSError as e:
                raise RedisConnectionError(f"Error while reading from socket: {e}") from e
        except BaseException:
            conn.disconnect()  # a reply half read: the next round trip connects anew
            raise
        return replies.out

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()

    def close(self) -> None:
        """Give the batcher's connection back to the pool (closed with it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._backend._client.connection_pool.release(conn)


_SYNC_BATCHERS: weakref.WeakSet[Batcher] = weakref.WeakSet()


def _after_fork() -> None:
    for batcher in list(_SYNC_BATCHERS):
        batcher._forked()


os.register_at_fork(after_in_child=_after_fork)


class AsyncBatcher:
    """Coalesces one asyncio backend's concurrent script calls into
    pipelines: a call that finds no round trip in flight sends it itself;
    the round trips of queued calls are a task's, the backend's, which runs
    while calls keep queueing."""

    def __init__(self, backend: AsyncRedisBackend, batch_size: int) -> None:
        refuse_cluster(backend)
        self._backend = backend
        self._coalescer = Coalescer(batch_size)
        self.batch_size = self._coalescer.batch_size
        self._packer = Packer(backend)
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None  # the round trips of queued calls

    @property
    def _queue(self) -> list[Call]:
        return self._coalescer.queue

    async def eval(self, script: str, keys: list[bytes], args: list[bytes]) -> list[int]:
        """The reply of one script call, as ``AsyncRedisBackend._eval``'s."""
        call = Call(script, keys, args, None)
        if self._coalescer.arrive(call):
            try:
                await self._drive(round_trip(self._backend, self._packer, [call]))
            finally:
                self._hand_on()
            return call.result()
        call.done = asyncio.get_running_loop().create_future()
        await call.done
        return call.result()

    def _hand_on(self) -> None:
        nxt = self._coalescer.next_batch()
        if nxt:
            self._task = asyncio.get_running_loop().create_task(self._send_queued(nxt))

    async def _send_queued(self, batch: list[Call]) -> None:
        try:
            while batch:
                # a caller cancelled while queued wants no answer: its call is not sent
                batch = [c for c in batch if not c.done.cancelled()]
                try:
                    if batch:
                        await self._drive(round_trip(self._backend, self._packer, batch))
                except Exception as e:  # noqa: BLE001 - every waiter is answered
                    self._unanswered(batch, e)
                self._answer(batch)
                batch = self._coalescer.next_batch()
        except BaseException as e:  # cancelled (the loop ends): no one waits for nothing
            self._unanswered(batch, e)
            self._answer(batch)
            while batch:
                batch = self._coalescer.next_batch()
                self._unanswered(batch, e)
                self._answer(batch)
            raise
        finally:
            self._task = None

    @staticmethod
    def _unanswered(batch: list[Call], e: BaseException) -> None:
        for c in batch:
            if c.reply is None and c.error is None:
                c.error = e

    @staticmethod
    def _answer(batch: list[Call]) -> None:
        for c in batch:
            if not c.done.done():
                c.done.set_result(None)

    async def _drive(self, trip: Trip) -> None:
        b = self._backend
        result: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = trip.throw(error) if error is not None else trip.send(result)
            except StopIteration:
                return
            result, error = None, None
            try:
                if op[0] is SEND:
                    await self._send(op[1])
                elif op[0] is RECV:
                    result = await self._recv(op[1])
                elif op[0] is FRESH:
                    await self._drop()
                    await b._fresh()
                else:
                    await self._give_back()  # (as Batcher._step says)
                    if op[0] is LOAD:
                        await b._client.script_load(b._scripts[op[1]].script)
                    else:
                        await b._check_memory_policy()
            except (RedisError, OSError) as e:
                error = e

    async def _send(self, payload: bytes) -> None:
        conn = self._conn
        if conn is None:
            conn = self._conn = await self._backend._client.connection_pool.get_connection()
        try:
            if not conn.is_connected:
                await conn.connect()  # (as Batcher._send says)
            writer = conn._writer
            writer.write(payload)
            # redis-py's send wraps every write in wait_for, a task of its
            # own (two turns of the loop); the buffer is almost always empty
            # again at once, and only a full one is waited for
            if writer.transport.get_write_buffer_size():
                timeout = conn.socket_timeout
                if timeout:
                    async with _timeout(timeout):
                        await writer.drain()
                else:
                    await writer.drain()
        except BaseException as e:
            await conn.disconnect(nowait=True)  # (cancelled mid-write, too)
            if isinstance(e, asyncio.TimeoutError):
                raise RedisTimeoutError("Timeout writing to socket") from None
            if isinstance(e, OSError):
                raise RedisConnectionError(f"Error while writing to socket: {e}") from e
            raise

    async def _recv(self, n: int) -> list[Any]:
        conn = self._conn
        replies = Replies(n)
        try:
            reader = conn._reader
            if reader is None:
                raise RedisConnectionError("Connection closed.")
            timeout = conn.socket_timeout
            try:
                if timeout:
                    async with _timeout(timeout):
                        while not replies.feed(await reader.read(_READ_SIZE)):
                            pass
                else:
                    while not replies.feed(await reader.read(_READ_SIZE)):
                        pass
            except asyncio.TimeoutError:
                raise RedisTimeoutError("Timeout reading from socket") from None
            except OSError as e:
                raise RedisConnectionError(f"Error while reading from socket: {e}") from e
        except BaseException:
            await conn.disconnect(nowait=True)  # a reply half read: connect anew next time
            raise
        return replies.out

    async def _drop(self) -> None:
        if self._conn is not None:
            await self._conn.disconnect(nowait=True)

    async def close(self) -> None:
        """Give the batcher's connection back to the pool."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            await asyncio.wait([task])
        await self._give_back()

    async def _give_back(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._backend._client.connection_pool.release(conn)


try:
    from asyncio import timeout as _timeout  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # pragma: no cover - Python 3.10
    from async_timeout import timeout as _timeout  # type: ignore[no-redef,import-not-found,unused-ignore]
