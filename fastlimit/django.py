"""Django integration: see :mod:`fastlimit.frameworks.django`."""

from fastlimit.frameworks.django import RateLimitMiddleware, check_settings, ratelimit

__all__ = ["RateLimitMiddleware", "check_settings", "ratelimit"]
