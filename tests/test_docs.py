"""The examples in the modules' docstrings run as written: every module of
the package (compiled ones included), and those that document public API
have some."""

import doctest
import importlib
import pkgutil

import pytest

import fastlimit

MODULES = sorted(m.name for m in pkgutil.walk_packages(fastlimit.__path__, "fastlimit.")
                 if ".examples" not in m.name)

# modules whose public API carries runnable examples
WITH_EXAMPLES = {
    "fastlimit", "fastlimit.limiters.composite", "fastlimit.policy.config",
    "fastlimit.http.headers", "fastlimit.limiters.limiter", "fastlimit.policy.policy",
    "fastlimit.limiters.progress", "fastlimit.policy.routes", "fastlimit.web.view",
    "fastlimit.web.proxies", "fastlimit.web.identify", "fastlimit.web.gate",
    "fastlimit.web.wsgi", "fastlimit.web.asgi", "fastlimit.client",
    "fastlimit.client.httpx", "fastlimit.core.gcra",
}


def test_every_module_is_seen():
    assert WITH_EXAMPLES - {"fastlimit"} <= set(MODULES)


@pytest.mark.parametrize("name", ["fastlimit", *MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0 or name not in WITH_EXAMPLES
