"""Route patterns compiled once into a lookup from (method, path) to rules.

A pattern is ``"METHOD /path"``: the method is an HTTP method or ``*`` (any),
and each path segment is a literal, ``{name}`` (exactly one segment) or, as
the last segment only, ``**`` (zero or more segments).  A request gets every
rule whose pattern matches, in the order the rules were given.

Lookups never scan the rules: a path that is literally one of the patterns
is answered from a dict built at compile time, and any other path walks a
trie of segments (its cost grows with the path's depth, not with the number
of rules).  The lookup is compiled (``policy/_plan.pyx``: ``RouteIndex``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from fastlimit.errors import ConfigurationError
from fastlimit.policy._plan import RouteIndex, RouteNode, normalize_path

__all__ = ["RouteTable", "normalize_path", "parse_pattern"]

T = TypeVar("T")

ANY = "*"
_METHOD_RE = re.compile(r"^(?:\*|[A-Z]+)$")
_PARAM_RE = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")
_OTHER = "\0other"  # stands for every method no pattern names
_PATTERN_HELP = (
    "'METHOD /path' where METHOD is an HTTP method or '*' and each path segment is "
    "a literal, '{name}' (one segment) or, last, '**' (any number of segments), "
    "e.g. 'POST /auth/session/login' or '* /files/uploads/{upload_id}/**'"
)


def parse_pattern(pattern: str) -> tuple[str, tuple[str, ...]]:
    """Split ``"METHOD /a/{b}/**"`` into its method and segments.

    Raises:
        ConfigurationError: the pattern is malformed (the message says why).

    Example:
        >>> parse_pattern("* /files/uploads/{upload_id}/**")
        ('*', ('files', 'uploads', '{upload_id}', '**'))
    """
    if not isinstance(pattern, str):
        raise ConfigurationError(f"expected {_PATTERN_HELP}, got {pattern!r}")
    parts = pattern.split()
    if len(parts) != 2 or not _METHOD_RE.match(parts[0]) or not parts[1].startswith("/"):
        raise ConfigurationError(f"expected {_PATTERN_HELP}, got {pattern!r}")
    method, path = parts
    segments = tuple(s for s in path.split("/") if s)
    for i, s in enumerate(segments):
        if s == "**":
            if i != len(segments) - 1:
                raise ConfigurationError(f"'**' must be the last segment, in {pattern!r}")
        elif s in (".", "..") or (("{" in s or "}" in s or "*" in s) and not _PARAM_RE.match(s)):
            raise ConfigurationError(f"bad segment {s!r} in {pattern!r}: expected {_PATTERN_HELP}")
    return method, segments


class RouteTable(Generic[T]):
    """Every rule whose pattern matches a request, in the rules' order.

    One object given with several patterns is one rule: it comes once.

    ``HEAD`` requests also match ``GET`` patterns, as frameworks answer HEAD
    with the GET handler.  Paths are compared after :func:`normalize_path`,
    case-sensitively.

    Example:
        >>> routes = RouteTable([("POST /auth/session/login", "login"),
        ...                      ("* /files/uploads/{upload_id}/**", "uploads")])
        >>> routes.match("POST", "/auth/session/login/")
        ('login',)
        >>> routes.match("PUT", "/files/uploads/u1/parts/3")
        ('uploads',)
        >>> routes.match("GET", "/auth/session/login")
        ()
    """

    def __init__(self, routes: Iterable[tuple[str, T]],
                 combine: Callable[[tuple[T, ...]], Any] | None = None) -> None:
        self._values: list[T] = []
        index_of: dict[int, int] = {}  # by id(): one object under many patterns is one rule
        self._root = RouteNode()
        literal_paths: list[str] = []
        methods = {"GET", "HEAD"}
        for pattern, value in routes:
            method, segments = parse_pattern(pattern)
            index = index_of.setdefault(id(value), len(self._values))
            if index == len(self._values):
                self._values.append(value)
            methods.add(method)
            node = self._root
            for s in segments:
                if s == "**":
                    node.tail.setdefault(method, []).append(index)
                    break
                if s.startswith("{"):
                    node.param = node.param or RouteNode()
                    node = node.param
                else:
                    node = node.literal.setdefault(s, RouteNode())
            else:
                node.here.setdefault(method, []).append(index)
                if not any(s.startswith("{") for s in segments):
                    literal_paths.append("/" + "/".join(segments))
        methods.discard(ANY)
        _fold_methods(self._root, (*methods, _OTHER))
        # The common case, a path that is itself a pattern, costs two dict
        # lookups: every method's answer for it is worked out now.
        walk = self._walk = RouteIndex(self._root, {}, True, self._values)
        exact: dict[str, dict[str, tuple[T, ...]]] = {}
        for path in literal_paths:
            answers = {m: walk.walk(m, path) for m in (*methods, _OTHER)}
            exact[path] = answers
        self._index = RouteIndex(self._root, exact, _has_wildcards(self._root), self._values,
                                 combine)

    def __len__(self) -> int:
        return len(self._values)

    def match(self, method: str, path: str) -> Any:
        """The values of every pattern matching ``method`` and ``path``
        (given to ``combine``, if the table has one)."""
        return self._index.match(method, path)

    def matches(self, method: str, path: str) -> bool:
        """Whether any pattern matches ``method`` and ``path``."""
        return bool(self._walk.match(method, path))


def _nodes(root: RouteNode) -> list[RouteNode]:
    """Every node of the trie.  A walk, not recursion: a pattern of a few
    thousand segments must not end in RecursionError."""
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.literal.values())
        if node.param is not None:
            stack.append(node.param)
    return out


def _has_wildcards(root: RouteNode) -> bool:
    return any(node.param is not None or node.tail for node in _nodes(root))


def _fold(table: dict[str, list[int]], methods: tuple[str, ...]) -> dict[str, list[int]]:
    folded: dict[str, list[int]] = {}
    for m in methods:
        found = table.get(m, []) + table.get(ANY, [])
        if m == "HEAD":  # frameworks answer HEAD with the GET handler
            found += table.get("GET", [])
        if found:
            folded[m] = sorted(set(found))
    return folded


def _fold_methods(root: RouteNode, methods: tuple[str, ...]) -> None:
    for node in _nodes(root):
        node.here = _fold(node.here, methods)
        node.tail = _fold(node.tail, methods)
