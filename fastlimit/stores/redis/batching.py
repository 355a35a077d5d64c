"""Auto-batching for the sync Redis backend (``RedisBackend(url, batch=True)``).

Concurrent script calls of one backend's threads share round trips: the
first caller to find no round trip in flight sends its call at once, alone
(a lone check waits for nothing).  Callers that arrive while a round trip
is in flight queue up; when it ends, the first of them leads the next round
trip, which carries up to ``batch_size`` queued calls in one pipeline of
EVALSHAs.  So a call waits at most for the round trip in flight, and the
calls per round trip grow with the load, not with a timer.

Every call stays the script call it was, run alone and atomically by
Redis, so decisions are those of the unbatched backend: a pipeline only
saves the round trips between them.  Calls of one thread stay in order
(a thread has one call at a time).  Failures are the backend's
(:mod:`.common`): a node marked down skips every call of the batch (each
counted in ``skipped``); a connection error or a timeout is retried once on
a fresh connection (not a refund that timed out, which may have run), then
fails every call of the round trip, each answered by its own failure
policy and counted in ``errors`` and its kind, while the node is marked
down once (one attempt failed, however many calls it carried); an error
reply (OOM, READONLY...) fails its own call only; NOSCRIPT loads the script
and sends its calls again.  A full pool (no connection within ``timeout``)
fails the round trip's calls as ``pool_timeouts``, which deny.

A call alone in its round trip is sent as unbatched (one EVALSHA), so a
lone check costs what it costs without ``batch``.  ``stats().batches``
counts the round trips of the batcher (a NOSCRIPT reply costs one more, to
load the script, and one to send its calls again, not counted) and
``stats().batched`` the calls they carried, each also counted in ``calls``,
``errors`` or ``skipped`` as unbatched.  Batching needs one server (or a Sentinel
master); a Redis Cluster's calls go to the nodes of their slots, which one
pipeline does not do, so ``batch=True`` with a cluster is refused.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from fastlimit.errors import ConfigurationError
from fastlimit.stores.redis.common import (
    Failure,
    NoScriptError,
    RedisError,
    failure_kind,
    retry_safe,
)

if TYPE_CHECKING:
    from fastlimit.stores.redis.sync import RedisBackend

__all__ = ["DEFAULT_BATCH_SIZE", "Batcher"]

# Calls per round trip at most: a pipeline is sent whole, and its replies
# are read before any of its callers is answered.
DEFAULT_BATCH_SIZE = 128


def check_batch_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise ConfigurationError(f"batch_size must be an int from 1 to 10000, got {value!r}")
    return value


class _Call:
    """One script call waiting for its reply (or for its turn to lead)."""

    __slots__ = ("args", "batch", "done", "error", "keys", "reply", "script")

    def __init__(self, script: str, keys: list[bytes], args: list[bytes]) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.reply: list[int] | None = None
        self.error: BaseException | None = None
        # set on the call that is to lead the next round trip: its batch
        self.batch: list[_Call] | None = None
        # held until the call is answered or handed the lead (a bare lock:
        # cheaper than an Event per call)
        self.done = threading.Lock()
        self.done.acquire()

    def result(self) -> list[int]:
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


class Batcher:
    """Coalesces one sync backend's concurrent script calls into pipelines."""

    def __init__(self, backend: RedisBackend, batch_size: int) -> None:
        if backend._cluster:
            raise ConfigurationError(
                "batch=True needs one Redis server (or a Sentinel master): a cluster's calls "
                "go to the nodes of their slots")
        self._backend = backend
        # one server: every call's node (see BackendBase._node_of)
        self._node = backend.address
        self.batch_size = check_batch_size(batch_size)
        self._mutex = threading.Lock()
        self._queue: list[_Call] = []
        self._busy = False  # a round trip is in flight (its leader will hand on)

    def eval(self, script: str, keys: list[bytes], args: list[bytes]) -> list[int]:
        """The reply of one script call, as ``RedisBackend._eval``'s: a list
        of ints, or :class:`~.common.Failure` raised."""
        call = _Call(script, keys, args)
        with self._mutex:
            if self._busy:
                self._queue.append(call)
                lead = False
            else:
                self._busy = True
                lead = True
        if not lead:
            call.done.acquire()  # answered, or handed the next round trip
            if call.batch is None:
                return call.result()
        self._lead(call.batch or [call])
        return call.result()

    def _lead(self, batch: list[_Call]) -> None:
        try:
            self._send(batch)
        except BaseException as e:  # noqa: BLE001 - every waiter must wake, answered
            for c in batch:
                if c.reply is None and c.error is None:
                    c.error = e
            raise
        finally:
            with self._mutex:
                nxt = self._queue[:self.batch_size]
                del self._queue[:self.batch_size]
                if nxt:
                    nxt[0].batch = nxt
                else:
                    self._busy = False
            if nxt:
                nxt[0].done.release()  # the next round trip goes before answers are read
            for c in batch[1:]:  # (batch[0] is the leader's own call)
                c.done.release()

    # -- one round trip -----------------------------------------------------------

    def _send(self, batch: list[_Call]) -> None:
        b = self._backend
        b._count("batches")
        b._count("batched", len(batch))
        if len(batch) == 1:  # alone: the unbatched call, failure handling and all
            c = batch[0]
            try:
                c.reply = b._eval_one(c.script, c.keys, c.args)
            except Failure as f:
                c.error = f
            return
        node = self._node
        skipped = b._skip(node)
        if skipped is not None:
            batch[0].error = skipped
            for c in batch[1:]:
                c.error = b._skip(node) or skipped  # each counted, as unbatched
            return
        try:
            replies = self._attempt(batch)
        except (RedisError, OSError) as e:
            kind = failure_kind(e)
            again = [c for c in batch if retry_safe(c.script, c.args, kind)]
            if again and b._retries(node, kind):
                if len(again) > 1:
                    b._count("retries", len(again) - 1)  # one per call, as unbatched
                for c in batch:
                    if c not in again:  # a refund that timed out may have run
                        c.error = self._failed(e, node, first=False)
                b._fresh()
                try:
                    replies2 = self._attempt(again)
                except (RedisError, OSError) as e2:
                    self._fail_all(again, e2, node)
                    return
                self._answer(again, replies2, node)
                return
            self._fail_all(batch, e, node)
            return
        self._answer(batch, replies, node)

    def _attempt(self, batch: list[_Call]) -> list[Any]:
        """One pipeline of the batch's EVALSHAs: replies, or the error reply
        of each call (NOSCRIPT: the script is loaded and its calls sent
        again, one more round trip)."""
        b = self._backend
        replies = self._pipeline(batch)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            b._count("noscript", len(missing))
            for name in sorted({batch[i].script for i in missing}):
                b._client.script_load(b._scripts[name].script)
            again = self._pipeline([batch[i] for i in missing])
            for i, r in zip(missing, again, strict=True):
                replies[i] = r
        return replies

    def _pipeline(self, batch: list[_Call]) -> list[Any]:
        b = self._backend
        pipe = b._client.pipeline(transaction=False)
        for c in batch:
            pipe.evalsha(b._scripts[c.script].sha, len(c.keys), *c.keys, *c.args)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    def _answer(self, batch: list[_Call], replies: list[Any], node: str) -> None:
        b = self._backend
        answered = False
        for c, r in zip(batch, replies, strict=True):
            if isinstance(r, BaseException):
                c.error = b._failure(r, node)
            else:
                b._success(node)
                answered = True
                c.reply = [int(x) for x in r.split()]
        if answered and b._first_success():
            b._check_memory_policy()

    def _failed(self, e: BaseException, node: str, first: bool) -> Failure:
        # one failed round trip marks its node down once, whatever it carried
        return self._backend._failure(e, node, mark=first)

    def _fail_all(self, batch: list[_Call], e: BaseException, node: str) -> None:
        for i, c in enumerate(batch):
            c.error = self._failed(e, node, first=i == 0)
