"""The client-side throttle against a real HTTP server on 127.0.0.1.

The server runs in a thread of the test, started and shut down by a fixture.
It limits all its callers together with the GCRA oracle of tests/model.py
(not fastlimit), answers 429 with Retry-After, and sends the rate-limit
fields a test asks for.  Server and client share one FakeClock, so a client
that sleeps moves the time the server sees: every time below is exact."""

import asyncio
import json
import math
import multiprocessing as mp
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import requests
from model import Model

from fastlimit import Limiter, Rate, RateLimitExceeded, SharedTable
from fastlimit.client import (
    AsyncThrottledTransport,
    ServerLimits,
    Throttle,
    ThrottledAdapter,
    ThrottledTransport,
    read_limits,
)

S = 1_000_000_000

class LimitedServer:
    """An HTTP server limiting all callers together to ``rate`` (None: no
    limit).  ``fields`` picks the rate-limit headers: "ietf" (RateLimit,
    draft -10), "legacy" (X-RateLimit-*, Reset in delta seconds), "draft"
    (RateLimit-Remaining / -Reset).  ``retry_after``, if set, is what every
    request is answered: 429 with that Retry-After.  ``others`` maps an
    arrival's index to requests another client of the same API makes just
    before it.  Each arrival is logged in ``arrivals`` as (time, status,
    body), and its headers in ``answers``.  ``fixed``, if set, is what every
    request is answered: 200 with those headers."""

    def __init__(self, clock, rate=None, fields=(), retry_after=None, others=None, fixed=None):
        self.clock = clock
        self.fixed = fixed
        if rate is not None:
            r = Rate.parse(rate)
            self.t, self.burst = r.emission_interval_ns, r.limit
            self.model = Model(self.t, self.burst)
        else:
            self.model = None
        self.fields = fields
        self.retry_after = retry_after
        self.others = others or {}
        self.arrivals = []
        self.answers = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # one write per response, sent at once: keep-alive with small
            # writes meets delayed ACKs (40 ms a request)
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def do_GET(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers = owner.answer(body)
                reply = json.dumps({"status": status}).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        # a short poll: shutdown() waits for the loop's next look at its flag
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.02,),
                                       daemon=True)

    def answer(self, body):
        with self.lock:
            now = self.clock()
            status, headers = self.decide(now)
            self.arrivals.append((now, status, body))
            self.answers.append(headers)
        return status, headers

    def decide(self, now):
        if self.fixed is not None:
            return 200, dict(self.fixed)
        if self.retry_after is not None:
            return 429, {"Retry-After": str(self.retry_after)}
        if self.model is None:
            return 200, {}
        for _ in range(self.others.get(len(self.arrivals), 0)):
            assert self.model.hit("everyone", now).allowed
        step = self.model.hit("everyone", now)
        status = 200 if step.allowed else 429
        headers = {}
        if "ietf" in self.fields:
            headers["RateLimit-Policy"] = f'"api";q={self.burst};w={self.t * self.burst // S}'
            headers["RateLimit"] = f'"api";r={step.remaining};t={seconds(self.next_unit(step))}'
        if "legacy" in self.fields:
            headers["X-RateLimit-Limit"] = str(self.burst)
            headers["X-RateLimit-Remaining"] = str(step.remaining)
            headers["X-RateLimit-Reset"] = str(seconds(step.reset_after_ns))
        if "draft" in self.fields:
            headers["RateLimit-Remaining"] = str(step.remaining)
            headers["RateLimit-Reset"] = str(seconds(self.next_unit(step)))
        if not step.allowed:
            headers["Retry-After"] = str(max(1, seconds(step.retry_after_ns)))
        return status, headers

    def next_unit(self, step):
        """Until one more request is available (0: the key is full)."""
        if step.reset_after_ns == 0:
            return 0
        free = self.burst * self.t - step.reset_after_ns
        return (max(0, free // self.t) + 1) * self.t - free

    def times(self, t0):
        return [(t - t0, status) for t, status, _ in self.arrivals]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(timeout=10)


def seconds(ns):
    return math.ceil(ns / S)


@pytest.fixture
def mem():
    t = SharedTable.anonymous(capacity=1024)
    yield t
    t.close()


@pytest.fixture
def serve(clock):
    """Start a LimitedServer on the test's clock; shut down after the test."""
    started = []

    def start(**kw):
        server = LimitedServer(clock, **kw).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


def top_jitter(a, b):
    return b  # the largest wait jitter can pick: makes every retry's time exact


def get_all(limiter, url, n, **options):
    with httpx.Client(transport=ThrottledTransport(limiter, **options)) as http:
        return [http.get(f"{url}/items/{i}").status_code for i in range(n)]


@pytest.mark.slow
def test_a_client_sharing_the_servers_limit_is_never_refused(mem, clock, serve):
    server = serve(rate="3/3s", fields=("ietf",))
    lim = Limiter("3/3s", store=mem, clock=clock)
    t0 = clock()
    assert get_all(lim, server.url, 10) == [200] * 10
    assert server.times(t0) == [(0, 200)] * 3 + [(k * S, 200) for k in range(1, 8)]


@pytest.mark.parametrize("fields", ["ietf", "legacy", "draft"])
def test_rate_limit_headers_slow_a_looser_client_before_any_429(mem, clock, serve, fields):
    # The client believes 30/1s; the server allows 3 per 3 s.  From the
    # first answers on, its headers hold the client to the server's pace.
    server = serve(rate="3/3s", fields=(fields,))
    lim = Limiter("30/1s", store=mem, clock=clock)
    t0 = clock()
    assert get_all(lim, server.url, 10) == [200] * 10
    assert [status for _, status in server.times(t0)] == [200] * 10, "never a 429"
    if fields != "legacy":  # RateLimit's t: exactly when the next one is free
        assert server.times(t0) == [(0, 200)] * 3 + [(k * S, 200) for k in range(1, 8)]


def test_a_429_with_rate_limit_fields_is_retried_and_the_client_recovers(mem, clock, serve):
    # The client keeps to the server's rate, but another client of the API
    # takes one request's room just before the client's third: a 429.
    server = serve(rate="3/3s", fields=("ietf", "legacy"), others={2: 1})
    lim = Limiter("3/3s", store=mem, clock=clock)
    t0 = clock()
    assert get_all(lim, server.url, 6, jitter=top_jitter) == [200] * 6
    arrivals = server.times(t0)
    assert [s for _, s in arrivals] == [200, 200, 429] + [200] * 4, "one 429, then none"
    refused = server.answers[2]
    assert (refused["Retry-After"], refused["RateLimit"]) == ("1", '"api";r=0;t=1')
    assert arrivals[3][0] == S + S // 2, "the retry: Retry-After (1 s) + backoff (0.5 s)"


def test_429s_are_retried_after_retry_after_plus_backoff(mem, clock, serve):
    # No rate-limit fields: the client learns the limit only from 429s.
    server = serve(rate="3/3s")
    lim = Limiter("30/1s", store=mem, clock=clock)
    t0 = clock()
    assert get_all(lim, server.url, 8, jitter=top_jitter, backoff=0.5) == [200] * 8
    arrivals = server.times(t0)
    assert [s for _, s in arrivals].count(200) == 8 and 429 in [s for _, s in arrivals]
    refused_in_a_row = 0
    for (t, status), (t_next, _), headers in zip(arrivals[:-1], arrivals[1:], server.answers[:-1],
                                                 strict=True):
        if status == 200:
            refused_in_a_row = 0
            continue
        retry_after = int(headers["Retry-After"])
        backoff = min(30.0, 0.5 * 2 ** refused_in_a_row)
        assert t_next - t >= retry_after * S, "Retry-After honoured"
        assert t_next - t == retry_after * S + round(backoff * S), (t, t_next)
        refused_in_a_row += 1


def test_retries_stop_at_the_bound_and_return_the_429(mem, clock, serve):
    server = serve(retry_after=2)
    lim = Limiter("30/1s", store=mem, clock=clock)
    t0 = clock()
    statuses = get_all(lim, server.url, 1, max_retries=3, backoff=0.5, max_backoff=1.0,
                       jitter=top_jitter)
    assert statuses == [429]
    times = [t for t, _ in server.times(t0)]
    gaps = [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
    assert gaps == [int(2.5 * S), 3 * S, 3 * S], "1 + 3 retries; the backoff stops at 1 s"


def test_a_429_asking_too_long_is_returned_and_holds_the_limiter(mem, clock, serve):
    server = serve(retry_after=600)
    lim = Limiter("30/1s", store=mem, clock=clock)
    assert get_all(lim, server.url, 1, max_retry_after=60, max_hold=600) == [429]
    assert len(server.arrivals) == 1
    key = server.url  # the default key: the origin
    assert lim.peek(key).retry_after == 600.0, "the next request waits what the server said"
    with pytest.raises(RateLimitExceeded) as e:
        get_all(lim, server.url, 1, max_wait=10)
    assert e.value.key == key and e.value.retry_after == 600.0
    # by default a hold is bounded by max_retry_after
    other = Limiter("30/1s", store=mem, clock=clock, name="other")
    assert get_all(other, server.url, 1, max_retry_after=60) == [429]
    assert other.peek(key).retry_after == 60.0


def test_the_async_transport_follows_the_same_headers(mem, clock, serve):
    server = serve(rate="3/3s", fields=("ietf",))
    lim = Limiter("30/1s", store=mem, clock=clock)
    t0 = clock()

    async def main():
        async with httpx.AsyncClient(transport=AsyncThrottledTransport(lim)) as http:
            return [(await http.get(f"{server.url}/items/{i}")).status_code for i in range(6)]

    assert asyncio.run(main()) == [200] * 6
    assert server.times(t0) == [(0, 200)] * 3 + [(k * S, 200) for k in range(1, 4)]


def test_the_requests_adapter_retries_and_sends_the_body_again(mem, clock, serve):
    server = serve(rate="1/2s")
    lim = Limiter("30/1s", store=mem, clock=clock)
    t0, pace = clock(), lim.rate.emission_interval_ns
    with requests.Session() as session:
        session.mount("http://", ThrottledAdapter(lim, key="partner", jitter=top_jitter))
        replies = [session.post(f"{server.url}/jobs", data=f"job {i}".encode())
                   for i in range(3)]
    assert [r.status_code for r in replies] == [200] * 3
    assert [(t, s, body) for t, s, body in server.arrivals] == [
        (t0, 200, b"job 0"),
        (t0, 429, b"job 1"), (t0 + int(2.5 * S), 200, b"job 1"),  # Retry-After 2 + 0.5
        (t0 + int(2.5 * S) + pace, 429, b"job 2"),  # the client's own pace: 1/30 s
        (t0 + int(5 * S) + pace, 200, b"job 2"),
    ]


@pytest.mark.parametrize("headers", [
    {"RateLimit": '"a";r=0;t=86400'},                         # "wait a day", on a 200
    {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "9999999999"},  # ~2286
    {"RateLimit-Remaining": "0", "RateLimit-Reset": "99999999"},
])
@pytest.mark.parametrize("max_hold", [None, 20])
def test_one_response_holds_the_limiter_no_longer_than_max_hold(mem, clock, serve, headers,
                                                                 max_hold):
    server = serve(fixed=headers)
    lim = Limiter("30/1s", store=mem, clock=clock)
    options = {} if max_hold is None else {"max_hold": max_hold}
    assert get_all(lim, server.url, 1, max_retry_after=60, **options) == [200]
    bound = 60 if max_hold is None else max_hold  # the default: max_retry_after
    assert 0 < lim.peek(server.url).retry_after <= bound


def _through(client, limiter, url, **options):
    """One GET of ``url`` through ``client``'s throttled transport: its status."""
    if client == "requests":
        with requests.Session() as session:
            session.mount("http://", ThrottledAdapter(limiter, **options))
            return session.get(f"{url}/items/0").status_code
    if client == "httpx-async":
        async def main():
            async with httpx.AsyncClient(
                    transport=AsyncThrottledTransport(limiter, **options)) as http:
                return (await http.get(f"{url}/items/0")).status_code
        return asyncio.run(main())
    return get_all(limiter, url, 1, **options)[0]


CLIENTS = ["httpx", "httpx-async", "requests"]
PACE = 1 / 30  # a Limiter("30/1s")'s emission interval


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("answer, status, bound", [
    ({"fixed": {"RateLimit": '"a";r=0;t=86400'}}, 200, 60),  # "wait a day", on a 200
    ({"fixed": {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "9999999999"}}, 200, 60),
    ({"retry_after": 99999999}, 429, 60),  # a 429 asking ~3 years
    ({"fixed": {"RateLimit": '"a";r=0;t=86400'}}, 200, 5),  # max_hold=5
])
def test_every_client_bounds_a_hold_by_max_hold(mem, clock, serve, client, answer, status,
                                                bound):
    server = serve(**answer)
    lim = Limiter("30/1s", store=mem, clock=clock)
    options = {"max_retry_after": 60} if bound == 60 else {"max_retry_after": 60, "max_hold": 5}
    assert _through(client, lim, server.url, **options) == status
    assert 0 < lim.peek(server.url).retry_after <= bound


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("headers, held", [
    # the t is inside the String: this item has no t, so none left and no wait
    # but the limiter's pace (1/30 s)
    ({"RateLimit": '"x;t=9999";r=0'}, PACE),
    ({"RateLimit": '"x;t=9999";r=0, "y";r=0;t=7'}, 7.0),
    # malformed fields ignored whole: nothing held
    ({"RateLimit": '"a";r=0;t=9999, junk junk'}, None),
    ({"RateLimit": '"a";r=0;t=9999;t'}, None),
    ({"RateLimit": '"a";r=-1, "b";r=0;t=9999'}, None),
    ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "-9999"}, PACE),
    ({"X-RateLimit-Remaining": "\xb2", "X-RateLimit-Reset": "9999"}, None),
])
def test_every_client_reads_only_well_formed_fields(mem, clock, serve, client, headers, held):
    server = serve(fixed=headers)
    lim = Limiter("30/1s", store=mem, clock=clock)
    assert _through(client, lim, server.url, max_retry_after=60, max_hold=10**6) == 200
    after = lim.peek(server.url).retry_after
    if held is None:  # the limiter's own pace only (burst left: not held)
        assert after == 0.0 and lim.peek(server.url, cost=29).allowed
    else:
        assert after == pytest.approx(held)


def test_throttle_options_are_checked(mem):
    lim = Limiter("1/1s", store=mem)
    with pytest.raises(TypeError, match="limiter must be a fastlimit.Limiter"):
        Throttle("1/1s")
    with pytest.raises(ValueError, match="max_retries must be an int >= 0, got -1"):
        Throttle(lim, max_retries=-1)
    with pytest.raises(ValueError, match="backoff must be a finite number of seconds >= 0"):
        Throttle(lim, backoff=float("inf"))
    with pytest.raises(ValueError, match="max_hold must be a finite number of seconds >= 0, "
                                         "got -1"):
        Throttle(lim, max_hold=-1)
    assert Throttle(lim, max_retry_after=42).max_hold == 42.0
    with pytest.raises(ValueError, match="timeout must be None or a number of seconds"):
        ThrottledTransport(lim, max_wait=-5)


@pytest.mark.parametrize("headers, limits", [
    ({"RateLimit": '"api";r=50;t=30'}, ServerLimits(50, None, None)),
    ({"RateLimit": '"min";r=0;t=12, "day";r=400;t=3600'}, ServerLimits(0, 12.0, None)),
    ({"RateLimit": '"a,b";r=0;t=5, "c";r=0;t=9'}, ServerLimits(0, 9.0, None)),
    ({"RateLimit": "limit=10, remaining=0, reset=7"}, ServerLimits(0, 7.0, None)),
    ({"RateLimit-Remaining": "0", "RateLimit-Reset": "4"}, ServerLimits(0, 4.0, None)),
    ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "30"}, ServerLimits(0, 30.0, None)),
    ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1700000030"},
     ServerLimits(0, 30.0, None)),
    ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1700000030500"},
     ServerLimits(0, 30.5, None)),
    ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2023-11-14T22:14:20.500Z"},
     ServerLimits(0, 60.5, None)),
    ({"X-RateLimit-Remaining": "3", "RateLimit": '"api";r=1;t=2'}, ServerLimits(1, None, None)),
    ({"Retry-After": "120"}, ServerLimits(None, None, 120.0)),
    ({"Retry-After": "Tue, 14 Nov 2023 22:13:10 GMT"}, ServerLimits(None, None, 0.0)),
    ({"Retry-After": "Tue, 14 Nov 2023 22:14:20 GMT"}, ServerLimits(None, None, 60.0)),
    ({"Retry-After": "soon", "X-RateLimit-Remaining": "many", "RateLimit": "?"},
     ServerLimits(None, None, None)),
    # what a string holds is the string's: no t here
    ({"RateLimit": '"x;t=9999";r=0'}, ServerLimits(0, None, None)),
    ({"RateLimit": '"x, y;r=0;t=9999";r=4'}, ServerLimits(4, None, None)),
    # a field that is not a structured List is ignored whole (draft -10)
    ({"RateLimit": '"api";r=0;t=30, junk junk'}, ServerLimits(None, None, None)),
    ({"RateLimit": '"api";r=0;t=30,'}, ServerLimits(None, None, None)),
    # an item without a count r >= 0, or with a t that is not one, makes the
    # field malformed: ignored whole (draft -10: it MUST be)
    ({"RateLimit": '"api";r=0;t=30;t'}, ServerLimits(None, None, None)),  # t=?1
    ({"RateLimit": '"a";r=-1;t=5, "c";r=2'}, ServerLimits(None, None, None)),
    ({"RateLimit": '"b";r=1.5, "c";r=2'}, ServerLimits(None, None, None)),
    ({"RateLimit": '"a";r="0";t=5'}, ServerLimits(None, None, None)),
    ({"RateLimit": '"a";t=5, "c";r=0;t=3'}, ServerLimits(None, None, None)),
    ({"RateLimit": '"a";r=0;t=-3'}, ServerLimits(None, None, None)),
    ({"RateLimit": "limit=10, remaining=0, reset=-7"}, ServerLimits(None, None, None)),
    # draft -10's examples; unknown parameters (pk) are not an error
    ({"RateLimit": '"default";r=50;t=30'}, ServerLimits(50, None, None)),
    ({"RateLimit": '"problemPolicy";r=0;t=10'}, ServerLimits(0, 10.0, None)),
    ({"RateLimit": '"default";r=1;pk=:dHJhbnNhY3Rpb24=:, "daily";r=0;t=3600'},
     ServerLimits(0, 3600.0, None)),
    # whitespace per RFC 9651 section 4.2: SP/HTAB around commas, SP after ';'
    ({"RateLimit": '  "a";r=3; t=5 ,\t"b";r=0; t=7  '}, ServerLimits(0, 7.0, None)),
    ({"RateLimit": '"a";r=3 ;t=5'}, ServerLimits(None, None, None)),  # no SP before ';'
    # counts and seconds are ASCII digits of a sane length, else ignored (no
    # ValueError out of int(); no "1_0", "nan", other scripts' digits)
    ({"X-RateLimit-Remaining": b"\xb2"}, ServerLimits(None, None, None)),
    ({"X-RateLimit-Remaining": "9" * 5000}, ServerLimits(None, None, None)),
    ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "9" * 5000},
     ServerLimits(0, None, None)),
    ({"RateLimit-Remaining": "0", "RateLimit-Reset": "-4"}, ServerLimits(0, None, None)),
    ({"RateLimit-Remaining": "-1", "RateLimit-Reset": "4"}, ServerLimits(None, None, None)),
    ({"Retry-After": "-5"}, ServerLimits(None, None, None)),
    ({"Retry-After": "1_0"}, ServerLimits(None, None, None)),
    ({"Retry-After": "nan"}, ServerLimits(None, None, None)),
    ({"Retry-After": "1e400"}, ServerLimits(None, None, None)),
    ({"Retry-After": "Tue, 14 Nov 99999 22:14:20 GMT"}, ServerLimits(None, None, None)),
])
def test_reading_rate_limit_headers(headers, limits):
    # wall_now 1_700_000_000 is 2023-11-14T22:13:20Z
    assert read_limits(httpx.Headers(headers), wall_now=1_700_000_000) == limits


# -- processes of one job share the client's budget ---------------------------------

RATE, BURST = "40/1s", 4  # T = 25 ms


def _client_process(table, url, calls, ready, go, q):
    lim = Limiter(RATE, store=SharedTable.attach(table), name="client", burst=BURST)
    with httpx.Client(transport=ThrottledTransport(lim)) as http:
        ready.wait()
        go.wait()
        q.put([http.get(f"{url}/items/{i}").status_code for i in range(calls)])


@pytest.mark.slow
def test_four_processes_share_one_client_budget(table, table_name):
    # Real processes, so the real clock.  Nothing is booked before `start`,
    # and a request reaches the server after its slot, so the arrivals up to
    # any time t number at most the GCRA bound of [start, t].
    with LimitedServer(time.monotonic_ns) as server:
        ctx = mp.get_context("spawn")  # the server thread runs here: no fork
        ready, go, q = ctx.Barrier(5), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_client_process,
                             args=(table_name, server.url, 5, ready, go, q))
                 for _ in range(4)]
        for p in procs:
            p.start()
        ready.wait(timeout=60)  # all four set up: from here the clock counts
        start = time.monotonic_ns()
        go.set()
        statuses = [q.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    assert statuses == [[200] * 5] * 4
    t = Rate.parse(RATE).emission_interval_ns
    arrivals = sorted(at for at, _, _ in server.arrivals)
    assert len(arrivals) == 20
    over = [k for k, at in enumerate(arrivals, 1) if k > BURST + (at - start) // t]
    assert over == [], "the four together sent more than the shared limit allows"


# -- docs/batch.md's example ------------------------------------------------------------

class Geocoder:
    def lookup(self, address):
        return address, time.monotonic_ns()


def test_the_readme_batch_example_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTLIMIT_SHM_DIR", str(tmp_path))  # its table lands here
    from test_recipes import recipe  # docs/batch.md's block, found as every recipe is

    with LimitedServer(time.monotonic_ns, rate="30/1m", fields=("ietf",)) as server:
        ns = {"PARTNER_URL": server.url, "GEOCODER": Geocoder(), "__name__": "readme_batch"}
        exec(recipe("batch"), ns)
        try:
            assert ns["fetch"](range(5)) == [{"status": 200}] * 5
            start = time.monotonic_ns()
            located = [ns["locate"](f"{i} Main Street") for i in range(6)]
            assert ns["partner"].peek(server.url).remaining == 25
        finally:
            ns["table"].close()
    assert len(server.arrivals) == 5
    # 5/1s: five at once, and the sixth not before one interval has passed
    assert located[5][1] - start >= Rate.parse("5/1s").emission_interval_ns


def test_the_structured_field_reader_follows_rfc_9651():
    from decimal import Decimal

    from sfv import Token, parse_dictionary, parse_list
    # Strings hold ';', ',', '=' and escapes; Tokens may hold ':' and '/'
    assert parse_list('"a;t=9, b", tok:en/x;q=?0, -12;d=-1.250, :aGk:;e') == [
        ("a;t=9, b", {}), (Token("tok:en/x"), {"q": False}),
        (-12, {"d": Decimal("-1.25")}), (b"hi", {"e": True})]
    assert parse_list('"\\\\\\""') == [('\\"', {})]
    assert parse_list("999999999999999, 999999999999.999") == [
        (999999999999999, {}), (Decimal("999999999999.999"), {})]
    assert parse_list("") == [] and parse_list("   ") == []
    assert parse_dictionary("a=1;x, b, c=?0") == {
        "a": (1, {"x": True}), "b": (True, {}), "c": (False, {})}
    for bad in [
        "\ta",              # only SP is discarded around the field (section 4.2)
        "a ;q=1",           # no whitespace before ';'
        "a;\tq=1",          # only SP after ';'
        "a,,b", "a,", ",a",  # empty members
        "a;Q=1",            # keys are lower case
        "1234567890123456", "1234567890123.5", "1.2345", "1.", "--1",
        '"unterminated', '"bad\\escape"', '"tab\tin"',
        ":not base64!:", ":aGk=",
        "(a b)",            # Inner Lists are not read: a RateLimit field has none
        "@1700000000",      # nor Dates
        "?2", "é",
    ]:
        with pytest.raises(ValueError):
            parse_list(bad)
