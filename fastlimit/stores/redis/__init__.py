"""Redis backend: the shared table's GCRA, decision for decision, on Redis.

When limits must hold across hosts, pass a :class:`RedisBackend` where a
:class:`~fastlimit.SharedTable` would go; nothing else changes::

    backend = RedisBackend("redis://10.0.0.5:6379/0")
    api = fastlimit.Limiter("100/1h", store=backend, name="api")
    api.allow("user:42")

Every check is one round trip: one atomic Lua script (``lua/gcra.lua``,
shipped as package data, run by EVALSHA with a NOSCRIPT fallback) reads the
key's tat, decides and stores it.  The decisions are the shared table's, to
the nanosecond: the script computes ``ahead = max(0, tat - now)`` and
whether the hit passes; :mod:`fastlimit.core.gcra` turns that into
``remaining``, ``reset_after`` and ``retry_after``.

* **Time.** Production uses the Redis server's clock (``TIME``): one clock
  for every host, with tats in Unix-epoch nanoseconds.  A clock injected
  into the Limiter (tests) is sent with each call instead, so traces are
  deterministic.  Lua numbers are doubles and epoch nanoseconds exceed 2^53,
  so the script holds every time and duration as whole seconds plus
  nanoseconds; its arithmetic is exact for all values in ``[0, 2^63)`` ns,
  which covers every time and tolerance the core accepts (see ``gcra.lua``).
* **Keys.** ``<prefix>:<limiter name>:{<key>}`` for str and bytes keys
  (UTF-8 for str) and ``<prefix>:<limiter name>:#{<key>}`` for int keys, in
  unsigned decimal (64-bit two's complement, so -1 and 2**64-1 are one
  key).  The braces make the key the Redis Cluster hash tag, so every
  limiter's state for one key lives in one slot; ``hash_tag=`` chooses the
  tag instead (``<prefix>:<name>:{<tag>}:<key>``).  The value is the tat in
  decimal nanoseconds; the key expires (``PX``) when fully replenished, at
  ``ceil(reset_after)`` milliseconds on the server's clock.
* **Failures.** Connect and command timeouts; when Redis is down or slow a
  check answers by ``fail``: ``"local"`` (the default: the host's local
  table answers at the same rates, so an outage admits at most hosts x
  limit), ``"open"`` (allowed), ``"closed"`` (denied) or ``"raise"``
  (:class:`~fastlimit.BackendError`), logs a rate-limited warning and counts
  it in :meth:`RedisBackend.stats`, per kind.  A connection error or a
  timeout on a node that answered its last call is tried once more on a
  fresh connection; if that fails too, the node (the server, or one
  cluster node) is marked down for ``retry_interval`` seconds, doubling
  with each failure in a row up to ``max_retry_interval``: a dead server
  costs one attempt per interval, not one per request, and a dead cluster
  primary fails only its own slots.  Error replies are answers, not a node
  down: OOM, READONLY, MOVED/ASK (a plain client on a cluster node) and
  others are counted by kind and answered by the failure policy; NOSCRIPT
  loads the script.  A pool made from a URL blocks for a free connection
  (up to ``timeout``) instead of failing when every one is in use; a check
  that still finds none is denied, even under ``"open"``.
* **Sizing.** 72 bytes per rate key, 88 per quota key (MEMORY USAGE; about
  133 and 165 of ``used_memory`` with the keyspace's own entries:
  ``bench/redis_memory.py``).  Redis must not evict them (``noeviction``,
  or a Redis of fastlimit's own): the first answered call asks
  ``CONFIG GET maxmemory-policy`` and warns once if it evicts; OOM replies
  answer by ``fail`` and count in ``stats().oom``.
* **Topologies.** ``RedisBackend.from_url(url)`` (and ``RedisBackend(url)``,
  the asyncio twins, :func:`~fastlimit.store_from_url`) take ``redis://``,
  ``rediss://``, ``unix://``, ``redis+cluster://h1:p1,h2:p2`` (a Redis
  Cluster from these seeds) and ``redis+sentinel://h:p[,h:p]/service[/db]``
  (the master of a Sentinel service, followed through failovers)::

      RedisBackend.from_url("redis+cluster://10.0.0.5:7000,10.0.0.6:7000?fail=closed")
      RedisBackend.from_url("redis+sentinel://10.0.0.8:26379/limits?prefix=api")

  At construction one round trip (``INFO``) asks the server what it is: a
  plain URL to a cluster node is followed as a cluster, one to a replica
  is refused, as are other mismatches, each naming the URL to write (see
  :mod:`.topology`).  Ready-made redis-py clients (``Redis``,
  ``RedisCluster``, ``Sentinel(...).master_for(name)``) are used as given.
* **Two tiers.** With ``deny_cache=`` a :class:`~fastlimit.SharedTable`, a
  key Redis denied is answered locally, by every process on the host, until
  a hit could pass again: no round trip while a client hammers a limit.

Quotas and concurrency limits run on it too (``Quota(spec, store=backend)``,
``ConcurrencyLimit(n, backend)``), one script call per step, each with its
own script (``quota.lua``, ``leases.lua``) and the same failure policy:

* **Quotas.** ``<prefix>:<name>:quota{<key>}`` holds ``"<period tag>
  <count>"``.  The client computes the period from its wall clock (hosts'
  clocks must agree); the script counts, resets on a new period, never
  moves a key back to an older one, and keeps the key until ``QUOTA_GRACE_S``
  after its period ends.
* **Leases.** ``<prefix>:<name>:lease{<key>}`` is a sorted set of lease
  tokens scored by their expiry (ms, the server's TIME unless a clock is
  injected).  Acquiring drops the expired, counts and adds in one script;
  a lease lives ``lease_ttl`` seconds after its acquire or last renew.

The parts: :mod:`.common` (options, failure state, keys), :mod:`.plans`
(every operation, sans I/O), :mod:`.sync` and :mod:`.aio` (the two
backends, which drive the plans with redis-py's clients), :mod:`.topology`
(URLs and what they point at), ``lua/``.  It
needs redis-py (``pip install 'fastlimit[redis]'``).
"""

from fastlimit.stores.redis.aio import AsyncRedisBackend, AsyncRedisGcra, AsyncRedisQuotaCounter
from fastlimit.stores.redis.common import DEFAULT_LEASE_TTL, SCRIPTS, RedisStats
from fastlimit.stores.redis.plans import QUOTA_GRACE_S
from fastlimit.stores.redis.sync import RedisBackend, RedisGcra, RedisLeases, RedisQuotaCounter

__all__ = ["DEFAULT_LEASE_TTL", "QUOTA_GRACE_S", "SCRIPTS", "AsyncRedisBackend",
           "AsyncRedisGcra", "AsyncRedisQuotaCounter", "RedisBackend", "RedisGcra",
           "RedisLeases", "RedisQuotaCounter", "RedisStats"]
