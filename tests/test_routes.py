"""Route patterns: what matches, and paths that try to slip past a limit."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastlimit import ConfigurationError
from fastlimit.policy.routes import RouteTable, normalize_path, parse_pattern

ROUTES = RouteTable([
    ("POST /auth/session/login", "login"),
    ("POST /files/upload", "batch"),
    ("POST /files/uploads", "batch"),
    ("* /files/uploads/{upload_id}/**", "batch"),
    ("GET /cloud-storage/auth/google_drive/callback", "callback"),
    ("* /admin/**", "admin"),
    ("GET /users/{id}", "user"),
    ("GET /users/me", "me"),
    ("DELETE /users/{id}/sessions/{sid}", "session"),
])


@pytest.mark.parametrize("method, path, expected", [
    ("POST", "/auth/session/login", ("login",)),
    ("GET", "/auth/session/login", ()),
    ("POST", "/auth/session/login/extra", ()),
    ("POST", "/files/upload", ("batch",)),
    ("POST", "/files/uploads", ("batch",)),
    ("PUT", "/files/uploads/u-1", ("batch",)),           # ** matches zero segments
    ("PUT", "/files/uploads/u-1/parts/7", ("batch",)),
    ("POST", "/files/uploads/u-1/complete", ("batch",)),
    ("GET", "/files/uploadsX", ()),
    ("GET", "/files", ()),
    ("DELETE", "/admin", ("admin",)),
    ("GET", "/admin/a/b/c", ("admin",)),
    ("GET", "/users/42", ("user",)),
    ("GET", "/users/me", ("user", "me")),                # every match, in the rules' order
    ("POST", "/users/42", ()),
    ("DELETE", "/users/1/sessions/2", ("session",)),
    ("DELETE", "/users/1/sessions", ()),
    ("GET", "/", ()),
])
def test_matches(method, path, expected):
    assert ROUTES.match(method, path) == expected


@pytest.mark.parametrize("path", [
    "/auth/session/login/",
    "/auth//session/login",
    "/auth/session/./login",
    "/auth/x/../session/login",
    "/auth/session/login?next=/home",
    "auth/session/login",
])
def test_spellings_of_one_path_hit_the_same_limit(path):
    assert ROUTES.match("POST", path) == ("login",)


def test_head_counts_as_get():
    # frameworks answer HEAD with the GET handler: it must not dodge GET limits
    assert ROUTES.match("HEAD", "/cloud-storage/auth/google_drive/callback") == ("callback",)
    assert ROUTES.match("HEAD", "/users/1") == ("user",)
    assert ROUTES.match("HEAD", "/auth/session/login") == ()


def test_a_value_matched_by_two_patterns_comes_once():
    table = RouteTable([("* /a/**", 1), ("GET /a/{x}", 1), ("GET /a/b", 2)])
    assert table.match("GET", "/a/b") == (1, 2)
    assert table.match("GET", "/a/c") == (1,)


def test_literal_only_table_answers_other_paths_with_nothing():
    table = RouteTable([("POST /x", "x")])
    assert table.match("POST", "/x") == ("x",)
    assert table.match("POST", "/y/z") == ()
    assert len(table) == 1


def test_method_on_literal_path_falls_back_to_any_method():
    table = RouteTable([("* /x", "any"), ("POST /x", "post")])
    assert table.match("POST", "/x") == ("any", "post")
    assert table.match("PURGE", "/x") == ("any",)


def test_normalize_path():
    assert normalize_path("/") == "/"
    assert normalize_path("/a/../..") == "/"
    assert normalize_path("/a/b") == "/a/b"


@pytest.mark.parametrize("pattern", [
    "/no/method", "post /lowercase", "POST no-slash", "POST /a/**/b", "POST /a/{b", "POST /a/*",
    "POST /a/../b", "POST /a b", 42,
])
def test_bad_patterns(pattern):
    with pytest.raises(ConfigurationError):
        parse_pattern(pattern)


# -- normalising a client's path: what the frameworks route, at linear cost ----------


def _reference_normalize(path):
    """The rule, written plainly: no query, no empty or "." segments, ".."
    applied, a leading "/" and no trailing one."""
    path = path.split("?", 1)[0]
    segments = []
    for s in path.split("/"):
        if s in ("", "."):
            continue
        if s == "..":
            if segments:
                segments.pop()
            continue
        segments.append(s)
    return "/" + "/".join(segments)


@given(st.text(alphabet="/.a?é\udcff", max_size=60))
def test_normalize_path_follows_the_rule(path):
    assert normalize_path(path) == _reference_normalize(path)


@pytest.mark.parametrize("path", ["/./a/.." * 1170, "/a" * 4096, "/" + "x/" * 4000,
                                  "/.." * 3000 + "/login", "/é/./" * 2000])
def test_pathological_paths_normalize_and_route_as_frameworks_do(path):
    assert normalize_path(path) == _reference_normalize(path)
    table = RouteTable([("POST /login", "login"), ("GET /a/**", "tail"),
                        ("GET /x/{id}", "param")], combine=tuple)
    expected = {("POST", "/login"): ("login",), ("GET", "/a"): ("tail",)}
    normalized = _reference_normalize(path)
    for method in ("GET", "POST"):
        found = table.match(method, path)
        if normalized.startswith("/a/") or normalized == "/a":
            assert found == (("tail",) if method == "GET" else ())
        elif normalized == "/x/x":
            assert found == (("param",) if method == "GET" else ())
        else:
            assert found == expected.get((method, normalized), ())
