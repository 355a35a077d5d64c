"""A griffe extension for the API reference (mkdocs.yml loads it): the
docstrings title their doctests "Example:", which Google style reads as an
admonition of markdown text; "Examples:" makes them code, rendered as the
doctests they are (tests/test_docs.py runs them)."""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


class DoctestExamples(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
