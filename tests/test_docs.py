"""The examples in the modules' docstrings run as written."""

import doctest

import pytest

from fastlimit import (
    asgi,
    client,
    client_httpx,
    composite,
    config,
    headers,
    limiter,
    policy,
    progress,
    routes,
    spec,
    web,
    wsgi,
)


@pytest.mark.parametrize("module", [composite, config, headers, policy, routes, spec,
                                    web, wsgi, asgi, limiter, progress, client,
                                    client_httpx],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0 or module is spec
