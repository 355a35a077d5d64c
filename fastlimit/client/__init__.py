"""Client-side throttling: call someone else's rate-limited API politely.

A :class:`Throttle` runs every request of a client through a shared
:class:`~fastlimit.Limiter` first (waiting its turn), reads what the server
says about its limits, and retries 429s:

- **Proactively:** each request waits for the limiter (its key defaults to
  the URL's origin, ``https://api.example.com``).  Put the limiter on a named
  :class:`~fastlimit.SharedTable` and every process of a job spends one
  budget.
- **Following the server:** the ``RateLimit`` field (draft-ietf-httpapi-
  ratelimit-headers: ``"api";r=5;t=30``, and the older ``limit=, remaining=,
  reset=`` form), ``RateLimit-Remaining``/``-Reset``, and
  ``X-RateLimit-Remaining``/``-Reset`` (delta seconds, Unix seconds or
  milliseconds, or ISO 8601) hold the limiter to what the server has left
  (:meth:`Limiter.hold`), for every process sharing it.
- **Retrying:** a 429, or a 503 with ``Retry-After``, is retried up to
  ``max_retries`` times.  The wait is ``Retry-After`` (else the rate-limit
  headers' time until more quota, else 0) plus a backoff: half of
  ``min(max_backoff, backoff x 2**attempt)`` and a random part up to the
  other half.  A server asking for more than ``max_retry_after`` seconds gets
  its 429 returned as is.  The wait holds the shared limiter, so the other
  processes wait too.
- **Bounded trust:** no one response holds the limiter longer than
  ``max_hold`` seconds (default: ``max_retry_after``, 300), whatever it
  asks.  ``RateLimit`` is read with a strict RFC 9651 parser
  (:mod:`fastlimit.http.sfv`) and a malformed field is ignored whole; counts
  and seconds in the other fields are ASCII digits of at most 15, else
  ignored.  Request bodies are read into memory so a retry can
  send them again.

On a store that cannot hold keys (Redis) the client still waits and retries,
but each process sleeps out a 429 on its own.

The transports (they import their HTTP library on first use):

- :class:`ThrottledTransport` / :class:`AsyncThrottledTransport` for httpx
  (``pip install 'fastlimit[client]'``);
- :class:`ThrottledAdapter` for requests.

Example:
    >>> import fastlimit
    >>> api = fastlimit.Limiter("30/1m", name="partner")
    >>> throttle = Throttle(api, max_retries=3)
    >>> read_limits({"RateLimit": '"default";r=0;t=12', "Retry-After": "15"}, wall_now=0)
    ServerLimits(remaining=0, wait=12.0, retry_after=15.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastlimit._lazy import lazy_attributes
from fastlimit.client.throttle import Retry, ServerLimits, Throttle, origin, read_limits

if TYPE_CHECKING:
    from fastlimit.client.httpx import AsyncThrottledTransport as AsyncThrottledTransport
    from fastlimit.client.httpx import ThrottledTransport as ThrottledTransport
    from fastlimit.client.requests import ThrottledAdapter as ThrottledAdapter

__all__ = [
    "AsyncThrottledTransport",
    "Retry",
    "ServerLimits",
    "Throttle",
    "ThrottledAdapter",
    "ThrottledTransport",
    "origin",
    "read_limits",
]

# the transports need httpx or requests: imported when first asked for
__getattr__ = lazy_attributes(__name__, {
    "ThrottledTransport": "fastlimit.client.httpx",
    "AsyncThrottledTransport": "fastlimit.client.httpx",
    "ThrottledAdapter": "fastlimit.client.requests",
}, globals())
