"""The Redis backend's former path: it lives in :mod:`fastlimit.stores.redis`."""

from fastlimit.stores.redis import *  # noqa: F403
from fastlimit.stores.redis import __all__ as __all__  # noqa: F401
