"""Route patterns compiled once into a lookup from (method, path) to rules.

A pattern is ``"METHOD /path"``: the method is an HTTP method or ``*`` (any),
and each path segment is a literal, ``{name}`` (exactly one segment) or, as
the last segment only, ``**`` (zero or more segments).  A request gets every
rule whose pattern matches, in the order the rules were given.

Lookups never scan the rules: a path that is literally one of the patterns
is answered from a dict built at compile time, and any other path walks a
trie of segments (its cost grows with the path's depth, not with the number
of rules).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Generic, TypeVar

from fastlimit.errors import ConfigurationError

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


def normalize_path(path: str) -> str:
    """The path as routing sees it: no query, no empty or ``.`` segments,
    ``..`` applied, no trailing slash.

    Limits must not be dodged by writing ``/auth//session/login/`` for
    ``/auth/session/login``: frameworks route both to the same handler.

    Example:
        >>> normalize_path("/auth//session/./login/?next=/")
        '/auth/session/login'
    """
    cut = path.find("?")
    if cut >= 0:
        path = path[:cut]
    if "//" in path or "/." in path or path[-1:] == "/" or path[:1] != "/":
        segments: list[str] = []
        for s in path.split("/"):
            if s in ("", "."):
                continue
            if s == "..":
                if segments:
                    segments.pop()
                continue
            segments.append(s)
        path = "/" + "/".join(segments)
    return path


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


class _Node:
    __slots__ = ("literal", "param", "here", "tail")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.param: _Node | None = None
        # pattern indices by method: those ending at this node, and those
        # ending in '**' here.  After compiling, keyed by every method a
        # request can name (and _OTHER), with '*' and HEAD->GET folded in.
        self.here: dict[str, list[int]] = {}
        self.tail: dict[str, list[int]] = {}


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

    def __init__(self, routes: Iterable[tuple[str, T]]) -> None:
        self._values: list[T] = []
        index_of: dict[int, int] = {}  # by id(): one object under many patterns is one rule
        self._root = _Node()
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
                    node.param = node.param or _Node()
                    node = node.param
                else:
                    node = node.literal.setdefault(s, _Node())
            else:
                node.here.setdefault(method, []).append(index)
                if not any(s.startswith("{") for s in segments):
                    literal_paths.append("/" + "/".join(segments))
        methods.discard(ANY)
        _fold_methods(self._root, (*methods, _OTHER))
        self._dynamic = _has_wildcards(self._root)
        # The common case, a path that is itself a pattern, costs two dict
        # lookups: every method's answer for it is worked out now.
        self._exact: dict[str, dict[str, tuple[T, ...]]] = {}
        for path in literal_paths:
            answers = {m: self._walk(m, path) for m in methods}
            answers[_OTHER] = self._walk(_OTHER, path)
            self._exact[path] = answers

    def __len__(self) -> int:
        return len(self._values)

    def match(self, method: str, path: str) -> tuple[T, ...]:
        """The values of every pattern matching ``method`` and ``path``."""
        path = normalize_path(path)
        answers = self._exact.get(path)
        if answers is not None:
            found = answers.get(method)
            return found if found is not None else answers[_OTHER]
        if not self._dynamic:
            return ()
        return self._walk(method, path)

    def _walk(self, method: str, path: str) -> tuple[T, ...]:
        segments = path.split("/")  # a normalized path: ["", "a", "b"], or ["", ""] for "/"
        end = len(segments) if segments[-1] else len(segments) - 1
        hits: list[int] = []
        stack = [(self._root, 1)]
        while stack:
            node, i = stack.pop()
            if node.tail:
                hits += node.tail.get(method) or node.tail.get(_OTHER) or ()
            if i == end:
                if node.here:
                    hits += node.here.get(method) or node.here.get(_OTHER) or ()
                continue
            child = node.literal.get(segments[i])
            if child is not None:
                stack.append((child, i + 1))
            if node.param is not None:
                stack.append((node.param, i + 1))
        if not hits:
            return ()
        if len(hits) == 1:
            return (self._values[hits[0]],)
        return tuple(self._values[i] for i in sorted(set(hits)))


def _nodes(root: _Node) -> list[_Node]:
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


def _has_wildcards(root: _Node) -> bool:
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


def _fold_methods(root: _Node, methods: tuple[str, ...]) -> None:
    for node in _nodes(root):
        node.here = _fold(node.here, methods)
        node.tail = _fold(node.tail, methods)
