"""The examples in the policy and headers modules' docstrings run as written."""

import doctest

import pytest

from fastlimit import asgi, composite, config, headers, policy, routes, spec, web, wsgi


@pytest.mark.parametrize("module", [composite, config, headers, policy, routes, spec,
                                    web, wsgi, asgi],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0 or module is spec
