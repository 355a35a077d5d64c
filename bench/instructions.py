"""Instruction counts of the hot path, for a host too noisy for wall time.

Run it under callgrind twice, with N calls and with none; the difference
divided by N is the instructions per call (the driver loop included).  Keep
numpy's BLAS to one thread: its pool's spinning adds noise.

    export OPENBLAS_NUM_THREADS=1
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python bench/instructions.py allow 1000000      # and 0: / 1e6
    valgrind ... python bench/instructions.py hit_many 11   # and 1: per key, / 1e6

``hit_many`` hits ``--keys`` keys (100k) per batch in a table of
``--capacity`` slots (200k); ``--keys 1000000 --capacity 1000000`` is the
full table, ``--keys 1`` or ``16`` the fixed cost of a small batch:

    valgrind ... python bench/instructions.py hit_many 11 --keys 1000000 --capacity 1000000
    valgrind ... python bench/instructions.py hit_many 100001 --keys 16   # and 1: / 1e5

``--build DIR`` measures the fastlimit checked out (and built) in DIR.

A request through the middleware, in process (the example application of
``middleware_bench.py``, its policy and API key), against the plain
application; the difference of the two is what the middleware adds:

    valgrind ... python bench/instructions.py wsgi 2000        # and 0: / 2000
    valgrind ... python bench/instructions.py plain_wsgi 2000  # and 0: / 2000
    (asgi, plain_asgi likewise)

``--path`` sends a client's pathological path instead of ``/v1/items``
(``dotdot``: 8 KB of ``/./a/..``; ``deep``: 4,096 segments; ``slashes``:
4,000 segments and a trailing slash), to see what normalising and routing
it costs against the usual request:

    valgrind ... python bench/instructions.py wsgi 2000 --path dotdot  # and 0: / 2000
"""

import argparse
import collections
import sys

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("what", choices=["allow", "hit_many", "wsgi", "plain_wsgi", "asgi",
                                     "plain_asgi"])
parser.add_argument("n", type=int, help="calls of allow, batches of 100k keys for hit_many, "
                                        "or requests")
parser.add_argument("--build", help="a checkout to import fastlimit from")
parser.add_argument("--keys", type=int, default=100_000, help="keys per hit_many batch")
parser.add_argument("--capacity", type=int, default=200_000, help="table slots for hit_many")
PATHS = {"usual": "/v1/items", "dotdot": "/./a/.." * (8192 // 7), "deep": "/a" * 4096,
         "slashes": "/" + "x/" * 4000}
parser.add_argument("--path", choices=list(PATHS), default="usual",
                    help="the request path (wsgi, asgi)")
args = parser.parse_args()
if args.build:
    sys.path.insert(0, args.build)

import numpy as np  # noqa: E402

import fastlimit  # noqa: E402


def requests(what: str, n: int) -> None:
    """n requests to the example app (after 200 to warm it up)."""
    import asyncio
    import os
    import tempfile
    import uuid

    from middleware_bench import KEY, POLICY, _remove_table

    with tempfile.TemporaryDirectory() as tmp:
        policy = os.path.join(tmp, "policy.toml")
        with open(policy, "w") as f:
            f.write(POLICY)
        os.environ.update(FASTLIMIT_POLICY=policy, FASTLIMIT_TABLE=f"ins-{uuid.uuid4().hex[:8]}")
        from fastlimit.examples import app
        handler = getattr(app, what)
        try:
            if what.endswith("wsgi"):
                environ = {"REQUEST_METHOD": "GET", "PATH_INFO": PATHS[args.path],
                           "QUERY_STRING": "", "SCRIPT_NAME": "", "REMOTE_ADDR": "127.0.0.1",
                           "HTTP_HOST": "127.0.0.1", "HTTP_X_API_KEY": KEY}
                for _ in range(200 + n):
                    body = handler(dict(environ), lambda *a: None)
                    for _chunk in body:
                        pass
                    if hasattr(body, "close"):
                        body.close()
            else:
                scope = {"type": "http", "method": "GET", "path": PATHS[args.path],
                         "query_string": b"", "client": ("127.0.0.1", 5000),
                         "headers": [(b"host", b"127.0.0.1"), (b"x-api-key", KEY.encode())]}

                async def receive() -> dict[str, object]:
                    return {"type": "http.request", "body": b""}

                async def send(message: object) -> None:
                    pass

                async def run() -> None:
                    for _ in range(200 + n):
                        await handler(dict(scope), receive, send)

                asyncio.run(run())
        finally:
            _remove_table(os.environ["FASTLIMIT_TABLE"])


if args.what not in ("allow", "hit_many"):
    requests(args.what, args.n)
    sys.exit()

table = fastlimit.SharedTable.anonymous(args.capacity if args.what == "hit_many" else 200_000)
lim = fastlimit.Limiter("1000000000/1s", table, name="x")
if args.what == "allow":
    collections.deque(map(lim.allow, ["a", "b", "c", "d"] * (args.n // 4)), maxlen=0)
else:
    keys = np.arange(args.keys, dtype=np.uint64)
    for _ in range(args.n):
        lim.hit_many(keys)
