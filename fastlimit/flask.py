"""Flask integration: see :mod:`fastlimit.frameworks.flask`."""

from fastlimit.frameworks.flask import FlaskLimiter

__all__ = ["FlaskLimiter"]
