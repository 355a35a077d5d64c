"""The one decision path against an oracle of the policy's rules.

Random requests go to one policy through each of its entry points in turn:
``Policy.hit``, the WSGI middleware, the ASGI middleware (called directly
and through its ``__call__``).  Every answer (allowed, status, kind, the
limit the headers describe, every X-RateLimit-* field and Retry-After) must
be what tests/policy_model.py, written from the README's rules over the GCRA
model, says; whichever way a request comes in, it is the same decision.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_model import NAMES, PolicyModel

from fastlimit import CapacityError, FakeClock, Identity, Policy, SharedTable, asgi, wsgi
from fastlimit.web.gate import Gate
from fastlimit.web.view import RequestView

S = 10**9
WALL0 = 1_775_397_600 * S  # 2026-04-05T14:00:00Z

POLICY = {
    "policy": {"name": "lane"},
    "identities": {
        "api_key": {"rate": "tier"},
        "session": {"rate": "6/1h"},
        "token": {"rate": "4/1m"},
        "anonymous": {"rate": "2/1h"},
    },
    "tiers": {
        "GOLD": {"rate": "8/1m", "concurrency": {"uploads": 2}},
        "FREE": {"rate": "4/1h", "api_access": False},
        "CAPPED": {"rate": "5/1m", "quotas": {"ocr": "4/month"},
                   "caps": {"image_file_bytes": 100}},
    },
    "routes": {"POST /login": "2/1h", "POST /bulk": {"rate": "3/1m", "dedicated": True},
               "GET /audit": {"rate": "2/1m", "shadow": True},
               "files": {"match": "* /files/{id}/**", "rate": "3/1m", "anonymous_rate": "1/1m",
                         "per": "identity"}},
    "quotas": {"ocr": {"match": ["POST /ocr"]}},
    "caps": {"image_file_bytes": {"match": ["POST /ocr"]}},
    "concurrency": {"uploads": {"match": ["POST /upload"]}},
    "headers": {"reset": "delta"},
}

IDENTITIES = [None, Identity.invalid(), Identity.session("u1"), Identity.session("u2"),
              Identity.token("t1"), Identity.api_key("k1", "GOLD", account="a1"),
              Identity.api_key("k2", "GOLD"), Identity.api_key("k3", "FREE"),
              Identity.api_key("k4", "CAPPED")]
ROUTES = [("GET", "/items"), ("POST", "/login"), ("POST", "/bulk"), ("GET", "/audit"),
          ("POST", "/ocr"), ("GET", "/items/7"), ("POST", "/upload"), ("GET", "/files/f1/a"),
          ("PUT", "/files/f2/b/c"), ("GET", "/login/")]
WAYS = ["hit", "wsgi", "asgi", "asgi-call"]

requests = st.lists(st.tuples(
    st.sampled_from(ROUTES), st.sampled_from(IDENTITIES),
    st.sampled_from(["10.0.0.1", "10.0.0.2"]),
    st.sampled_from([1, 1, 1, 0, 2, 9]),
    st.sampled_from([None, 50, 500]),
    st.integers(0, 30 * S),                  # time passing before the request
    st.sampled_from([None, None, None, "1/1m", "20/1m"]),  # an override set now
    st.booleans(),                           # hold the request open (its lease)
    st.sampled_from(WAYS),
), max_size=40)


def month_left_ns(wall_ns: int) -> int:
    day = datetime.datetime.fromtimestamp(wall_ns // S, datetime.timezone.utc)
    nxt = datetime.datetime(day.year + day.month // 12, day.month % 12 + 1, 1,
                            tzinfo=datetime.timezone.utc)
    return calendar.timegm(nxt.timetuple()) * S - wall_ns


def rate_fields(headers) -> dict[str, str]:
    """The rate-limit fields of a response, by lower-case name; a field
    sent twice fails the test."""
    out: dict[str, str] = {}
    for name, value in headers:
        name = name.lower()
        if name.startswith(("x-ratelimit", "ratelimit", "retry-after")):
            assert name not in out, f"{name} sent twice"
            out[name] = value
    return out


class Ways:
    """One policy, and a request sent to it each way; the answer as
    (allowed, status, kind, limit, headers) and what to release."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.wsgi = wsgi.RateLimitMiddleware(self.app_wsgi, policy, identify=self.identify,
                                             cost=self.cost)
        self.asgi = asgi.RateLimitMiddleware(self.app_asgi, policy, identify=self.identify,
                                             cost=self.cost)

    @staticmethod
    def identify(view):
        return view.raw["identity"]

    @staticmethod
    def cost(view):
        return view.raw["cost"]

    def app_wsgi(self, environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def app_asgi(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def send(self, way, method, path, identity, ip, cost, length):
        if way == "hit":
            try:
                d = self.policy.hit(method, path, identity, ip, cost=cost, content_length=length)
            except CapacityError:  # what the middlewares answer 413
                return (False, 413, None, None, {}), None
            return (d.allowed, d.status, d.kind, d.limit, rate_fields(d.headers)), d.release
        if way == "wsgi":
            environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "REMOTE_ADDR": ip,
                       "identity": identity, "cost": cost}
            if length is not None:
                environ["CONTENT_LENGTH"] = str(length)
            seen = []
            body = self.wsgi(environ, lambda status, headers, exc_info=None: seen.extend(
                [status, headers]))
            b"".join(body)
            d = environ["fastlimit.decision"]
            status = int(seen[0].split()[0])
            headers = rate_fields(seen[1])
            close = getattr(body, "close", lambda: None)
            return (status == 200, None if status == 200 else status,
                    getattr(d, "kind", None), getattr(d, "limit", None), headers), close
        scope = {"type": "http", "method": method, "path": path, "client": (ip, 1234),
                 "headers": [] if length is None else
                 [(b"content-length", str(length).encode())], "cost": cost,
                 "identity": identity}
        sent = []

        async def receive():
            return {"type": "http.request", "body": b""}

        async def record(message):
            sent.append(message)

        call = self.asgi if way == "asgi-call" else self.asgi.__call__
        asyncio.run(call(scope, receive, record))
        d = scope["fastlimit.decision"]
        status = sent[0]["status"]
        headers = rate_fields((k.decode(), v.decode()) for k, v in sent[0]["headers"])
        # ASGI releases when the application returns: nothing left open
        return (status == 200, None if status == 200 else status,
                getattr(d, "kind", None), getattr(d, "limit", None), headers), None


@settings(max_examples=int(os.environ.get("DECISION_EXAMPLES", "80")), deadline=None)
@given(seq=requests)
def test_every_way_in_answers_as_the_rules_say(seq, tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    clock = FakeClock()
    policy = Policy.from_dict(
        {**POLICY, "store": {"quotas": str(state / "q.tbl")}}, store=SharedTable.anonymous(2000),
        clock=clock, wall_clock=lambda: WALL0 + clock())
    model = PolicyModel(WALL0)
    ways = Ways(policy)
    held = []
    try:
        for (method, path), identity, ip, cost, length, wait, override, hold, way in seq:
            clock.advance(ns=wait)
            if override is not None and identity is not None and identity.subject:
                kind = identity.kind if identity.kind != "invalid" else None
                if kind in ("session", "token") or (kind == "api_key"
                                                     and identity.tier != "FREE"):
                    subject = identity.account or identity.subject
                    name = NAMES[kind]  # an override is the identity limit's, by its name
                    policy.overrides.set(name, subject, override)
                    limit, per = override.split("/")
                    model.overrides[(name, subject)] = (int(limit), {"1m": 60}[per] * S)
            now = clock()
            try:
                want = model.hit(method, path.rstrip("/") or "/", identity, ip, now, cost,
                                 length, month_left_ns(WALL0 + now))
            except OverflowError:
                want = None
            got, release = ways.send(way, method, path, identity, ip, cost, length)
            if want is None:
                assert got[1] == 413, (method, path, identity, cost)
                continue
            expected = (want.allowed, want.status, want.kind, want.limit,
                        {k.lower(): v for k, v in want.headers.items()})
            assert got == expected, (way, method, path, identity, ip, cost, length)
            lease_owner = (identity.account or identity.subject) if (
                identity is not None and identity.kind == "api_key"
                and identity.tier == "GOLD") else None
            takes_lease = (want.allowed and method == "POST" and path == "/upload"
                           and lease_owner is not None)
            if hold and release is not None and takes_lease:
                held.append((release, lease_owner))
            else:
                if release is not None:
                    release()
                if takes_lease:
                    model.release(lease_owner)
            if held and not hold:  # end the oldest request held open
                release, owner = held.pop(0)
                release()
                model.release(owner)
    finally:
        for release, _ in held:
            release()
        policy.close()


def test_a_policy_that_overrides_hit_sees_every_request_of_the_middlewares():
    seen = []

    class Counting(Policy):
        def hit(self, method, path, identity=None, client_ip=None, **kwargs):
            seen.append(path)
            return super().hit(method, path, identity, client_ip, **kwargs)

    policy = Counting.from_dict({"identities": {"anonymous": {"rate": "10/1m"}}},
                                store=SharedTable.anonymous(100))
    app = wsgi.RateLimitMiddleware(lambda e, s: (s("200 OK", []), [b""])[1], policy)
    for path in ("/a", "/a", "/b"):
        app({"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": "10.0.0.1"},
            lambda *a: None)
    assert seen == ["/a", "/a", "/b"]


@pytest.mark.parametrize("ietf", [False, True])
def test_a_style_field_is_the_same_in_every_way(ietf):
    """The drift the design had: a field rendered by HeaderStyle in
    Policy.hit's headers and not in the middleware's.  One renderer now."""
    clock = FakeClock()
    spec = {"identities": {"anonymous": {"rate": "3/1m"}},
            "headers": {"reset": "epoch", "ietf": ietf}}
    policy = Policy.from_dict(spec, store=SharedTable.anonymous(100), clock=clock,
                              wall_clock=lambda: WALL0)
    ways = Ways(policy)
    answers = [ways.send(way, "GET", "/", None, f"10.0.0.{i}", 1, None)[0]
               for i, way in enumerate(WAYS)]
    names = {tuple(sorted(a[4])) for a in answers}
    assert len(names) == 1
    assert len({tuple(sorted(a[4].items())) for a in answers}) == 1  # same clock, same values
    d = policy.hit("GET", "/", None, "10.0.0.9")
    assert ("RateLimit-Policy" in dict(d.headers)) == ietf
    assert names == {tuple(sorted(rate_fields(d.headers)))}


def test_an_override_set_between_two_requests_applies_to_the_second():
    clock = FakeClock()
    policy = Policy.from_dict(POLICY, store=SharedTable.anonymous(100), clock=clock,
                              wall_clock=lambda: WALL0 + clock())
    gate = Gate(policy, identify=lambda view: Identity.token("t9"))
    view = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "REMOTE_ADDR": "10.0.0.1"}
    assert [gate.check(RequestView.from_environ(view)).allowed for _ in range(5)] == \
        [True] * 4 + [False]
    policy.overrides.set("token", "t9", "10/1m")
    clock.advance(60)  # the 4/1m burst has come back: now a burst of 10
    decisions = [gate.check(RequestView.from_environ(view)) for _ in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert decisions[0].headers[0] == ("X-RateLimit-Limit", "10")
