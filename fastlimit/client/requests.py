"""A requests transport adapter that throttles through a shared Limiter
(see :mod:`fastlimit.client`; import it from there)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

try:
    import requests
    from requests.adapters import HTTPAdapter
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("fastlimit's ThrottledAdapter needs requests: pip install requests") from e

from fastlimit.client.throttle import Throttle, origin
from fastlimit.limiters.limiter import Key, Limiter

__all__ = ["ThrottledAdapter"]


class ThrottledAdapter(HTTPAdapter):
    """A requests adapter that waits its turn on ``limiter`` before each
    request, follows the server's rate-limit headers and retries its 429s.
    Mount it on a Session: ``session.mount("https://", ThrottledAdapter(api))``.

    Only requests whose body is absent, ``bytes`` or ``str`` are retried (a
    stream cannot be sent twice); others get their 429 as is.

    Args:
        limiter: the shared limiter.
        key: the limiter key: a constant, a function of the
            ``requests.PreparedRequest``, or None for the URL's origin.
        **options: the :class:`~fastlimit.client.Throttle` options.
    """

    def __init__(self, limiter: Limiter, *,
                 key: Key | Callable[[requests.PreparedRequest], Key] | None = None,
                 **options: Any) -> None:
        super().__init__()
        self.throttle = Throttle(limiter, **options)
        self.key = key

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: bool | str = True, cert: Any = None,
             proxies: dict[str, str] | None = None) -> requests.Response:
        if self.key is None:
            url = urlsplit(request.url or "")
            key: Key = origin(url.scheme, url.netloc)
        else:
            key = self.key(request) if callable(self.key) else self.key
        replayable = request.body is None or isinstance(request.body, (bytes, str))
        attempt = 0
        while True:
            self.throttle.before(key)
            response = super().send(request, stream=stream, timeout=timeout, verify=verify,
                                    cert=cert, proxies=proxies)
            # a body that cannot be sent again counts as out of retries
            retry = self.throttle.after(key, response.status_code, response.headers,
                                        attempt if replayable else self.throttle.max_retries)
            if retry is None:
                return response
            response.close()  # frees the connection for the retry
            self.throttle.sleep(key, retry)
            attempt += 1
