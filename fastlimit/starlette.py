"""Starlette and FastAPI integration: see :mod:`fastlimit.frameworks.starlette`."""

from fastlimit.frameworks.starlette import StarletteLimiter

__all__ = ["StarletteLimiter"]
