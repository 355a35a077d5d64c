"""The middlewares' compiled request check (fastlimit._lane) answers exactly
what Policy.hit answers: run side by side on twin policies (same spec, same
clocks, tables of their own), request after request, they must agree on
every decision, header, status and body, and leave the same state."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastlimit import CapacityError, Decision, FakeClock, Identity, Policy, SharedTable
from fastlimit.http._fields import legacy_fields
from fastlimit.web.gate import Gate, _TooLarge
from fastlimit.web.view import RequestView

S = 10**9
WALL0 = 1_775_397_600 * S

POLICY = {
    "policy": {"name": "lane"},
    "identities": {
        "api_key": {"rate": "tier"},
        "session": {"rate": "6/1h"},
        "token": {"rate": "4/1m"},
        "anonymous": {"rate": "2/1h"},
    },
    "tiers": {
        "GOLD": {"rate": "8/1m"},
        "FREE": {"rate": "4/1h", "api_access": False},
        "CAPPED": {"rate": "5/1m", "quotas": {"ocr": "4/month"},
                   "caps": {"image_file_bytes": 100}},
    },
    "routes": {"POST /login": "2/1h", "POST /bulk": {"rate": "3/1m", "dedicated": True},
               "GET /audit": {"rate": "2/1m", "shadow": True}},
    "quotas": {"ocr": {"match": ["POST /ocr"]}},
    "caps": {"image_file_bytes": {"match": ["POST /ocr"]}},
}

IDENTITIES = [None, Identity.invalid(), Identity.session("u1"), Identity.session("u2"),
              Identity.token("t1"), Identity.api_key("k1", "GOLD", account="a1"),
              Identity.api_key("k2", "GOLD"), Identity.api_key("k3", "FREE"),
              Identity.api_key("k4", "CAPPED")]
ROUTES = [("GET", "/items"), ("POST", "/login"), ("POST", "/bulk"), ("GET", "/audit"),
          ("POST", "/ocr"), ("GET", "/items/7")]

requests = st.lists(st.tuples(
    st.sampled_from(ROUTES), st.sampled_from(IDENTITIES),
    st.sampled_from(["10.0.0.1", "10.0.0.2", ""]),
    st.sampled_from([1, 1, 1, 0, 2, 9, 10**30]),
    st.sampled_from([None, "50", "500"]),
    st.integers(0, 30 * S),              # time passing before the request
    st.sampled_from([None, None, None, "1/1m", "20/1m"]),  # an override set now
), max_size=40)


def twins(reset="delta", ietf=False):
    """Two policies alike in all but their tables, on one clock."""
    clock = FakeClock()
    made = [Policy.from_dict(dict(POLICY, headers={"reset": reset, "ietf": ietf},
                                  store={"quotas": os.path.join(os.environ["FASTLIMIT_STATE_DIR"],
                                                                f"twin{i}-quotas.tbl")}),
                             store=SharedTable.anonymous(1000), clock=clock,
                             wall_clock=lambda: WALL0 + clock())
            for i in range(2)]
    return clock, made


def answer(outcome):
    """Everything a response is made of."""
    if isinstance(outcome, _TooLarge):
        return "CapacityError"
    d = outcome.decision
    return (outcome.allowed, outcome.status, outcome.headers, outcome.body, outcome.kind,
            outcome.limit, outcome.rejected, outcome.retry_after, outcome.holding,
            outcome.would_allow, outcome.binding, outcome.result.denied_by,
            [(c.name, c.key, c.shadow, c.limiter.window()) for c in outcome.checks],
            outcome.result.shadow_denied, repr(outcome),
            None if d is None else (d.allowed, d.limit, d.remaining, d.reset_after_ns,
                                    d.retry_after_ns))


@pytest.mark.parametrize("reset,ietf", [("delta", False), ("epoch", False),
                                        ("iso", False), ("delta", True)])
@settings(max_examples=int(os.environ.get("LANE_EXAMPLES", "60")), deadline=None)
@given(seq=requests)
def test_the_compiled_check_answers_as_policy_hit(reset, ietf, seq):
    clock, (compiled, general) = twins(reset, ietf)
    gate = Gate(compiled, identify=lambda view: view.raw["identity"],
                cost=lambda view: view.raw["cost"])
    for (method, path), identity, ip, cost, length, wait, override in seq:
        clock.advance(ns=wait)
        if override is not None and identity is not None and identity.subject:
            # the identity's own limit, named after its kind, keyed by its subject
            for policy in (compiled, general):
                policy.overrides.set(identity.kind, identity.account or identity.subject,
                                     override)
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "REMOTE_ADDR": ip,
                   "identity": identity, "cost": cost}
        if length is not None:
            environ["CONTENT_LENGTH"] = length
        view = RequestView.from_environ(environ)
        try:
            expected = answer(general.hit(method, path, identity, ip or "unix", cost=cost,
                                          content_length=view.content_length))
        except CapacityError:  # the gate's 413
            expected = "CapacityError"
        got = gate.check(view)
        assert answer(got) == expected, (method, path, identity, ip, cost)
        got.release()
    for policy in (compiled, general):
        policy.close()


def test_an_override_set_between_two_requests_applies_to_the_second():
    clock, (policy, _) = twins()
    gate = Gate(policy, identify=lambda view: Identity.token("t9"))
    view = {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "REMOTE_ADDR": "10.0.0.1"}
    assert [gate.check(RequestView.from_environ(view)).allowed for _ in range(5)] == \
        [True] * 4 + [False]
    policy.overrides.set("token", "t9", "10/1m")
    clock.advance(60)  # the 4/1m burst has come back: now a burst of 10
    decisions = [gate.check(RequestView.from_environ(view)) for _ in range(11)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False]
    assert decisions[0].headers[0] == ("X-RateLimit-Limit", "10")


def test_a_policy_that_overrides_hit_sees_every_request():
    seen = []

    class Counting(Policy):
        def hit(self, method, path, identity=None, client_ip=None, **kwargs):
            seen.append(path)
            return super().hit(method, path, identity, client_ip, **kwargs)

    policy = Counting.from_dict(POLICY, store=SharedTable.anonymous(100))
    gate = Gate(policy)
    for path in ("/a", "/a", "/b"):
        gate.check(RequestView.from_environ(
            {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": "10.0.0.1"}))
    assert seen == ["/a", "/a", "/b"]


@given(after=st.integers(-2**63, 2**63 - 1), remaining=st.integers(0, 2**63 - 1),
       wall=st.one_of(st.integers(-2**63, 2**63 - 1), st.just(WALL0)),
       epoch=st.booleans())
def test_the_compiled_fields_are_the_rounded_up_arithmetic(after, remaining, wall, epoch):
    d = Decision(True, 7, remaining, after)
    at = max(0, after) + (wall if epoch else 0)
    assert legacy_fields(d, int(epoch), wall) == [
        ("X-RateLimit-Limit", "7"), ("X-RateLimit-Remaining", str(remaining)),
        ("X-RateLimit-Reset", str(-(-at // S)))]
