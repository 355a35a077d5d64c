"""The WSGI middleware, at the path the README names (it lives in
:mod:`fastlimit.web.wsgi`)."""

from fastlimit.web.wsgi import RateLimitMiddleware

__all__ = ["RateLimitMiddleware"]
