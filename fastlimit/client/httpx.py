"""httpx transports that throttle through a shared Limiter (see
:mod:`fastlimit.client`; import them from there)."""

from __future__ import annotations

from collections.abc import Callable

try:
    import httpx
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastlimit's httpx transports need httpx: pip install 'fastlimit[client]'") from e

from fastlimit.client.throttle import Throttle, origin
from fastlimit.limiters.limiter import Key, Limiter

__all__ = ["AsyncThrottledTransport", "ThrottledTransport"]

KeyOf = Key | Callable[[httpx.Request], Key] | None


def _key_of(key: KeyOf, request: httpx.Request) -> Key:
    if key is None:
        return origin(request.url.scheme, request.url.netloc.decode("ascii"))
    return key(request) if callable(key) else key


class ThrottledTransport(httpx.BaseTransport):
    """An httpx transport that waits its turn on ``limiter`` before each
    request, follows the server's rate-limit headers and retries its 429s.

    Args:
        limiter: the shared limiter.
        transport: the transport that sends (default ``httpx.HTTPTransport()``).
        key: the limiter key: a constant, a function of the
            ``httpx.Request``, or None for the URL's origin.
        **options: the :class:`~fastlimit.client.Throttle` options
            (``max_retries``, ``backoff``, ``max_backoff``, ``max_retry_after``,
            ``max_wait``, ``max_hold``, ``jitter``, ``wall_clock``).

    Example:
        >>> import fastlimit, httpx
        >>> api = fastlimit.Limiter("30/1m", name="partner")
        >>> http = httpx.Client(transport=ThrottledTransport(api, max_retries=3))
        >>> http.close()
    """

    def __init__(self, limiter: Limiter, transport: httpx.BaseTransport | None = None, *,
                 key: KeyOf = None, **options: object) -> None:
        self.throttle = Throttle(limiter, **options)  # type: ignore[arg-type]
        self.transport = transport if transport is not None else httpx.HTTPTransport()
        self.key = key

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        key = _key_of(self.key, request)
        if self.throttle.max_retries:
            request.read()  # a retry sends the body again
        attempt = 0
        while True:
            self.throttle.before(key)
            response = self.transport.handle_request(request)
            retry = self.throttle.after(key, response.status_code, response.headers, attempt)
            if retry is None:
                return response
            response.read()
            response.close()  # frees the connection for the retry
            self.throttle.sleep(key, retry)
            attempt += 1

    def close(self) -> None:
        self.transport.close()


class AsyncThrottledTransport(httpx.AsyncBaseTransport):
    """:class:`ThrottledTransport` for ``httpx.AsyncClient`` (default inner
    transport ``httpx.AsyncHTTPTransport()``)."""

    def __init__(self, limiter: Limiter, transport: httpx.AsyncBaseTransport | None = None, *,
                 key: KeyOf = None, **options: object) -> None:
        self.throttle = Throttle(limiter, **options)  # type: ignore[arg-type]
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self.key = key

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        key = _key_of(self.key, request)
        if self.throttle.max_retries:
            await request.aread()
        attempt = 0
        while True:
            await self.throttle.abefore(key)
            response = await self.transport.handle_async_request(request)
            retry = self.throttle.after(key, response.status_code, response.headers, attempt)
            if retry is None:
                return response
            await response.aread()
            await response.aclose()
            await self.throttle.asleep(key, retry)
            attempt += 1

    async def aclose(self) -> None:
        await self.transport.aclose()
