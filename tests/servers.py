"""Real servers for end-to-end tests: started on a free 127.0.0.1 port and
stopped by the PID (and process group) we started.  The code lives in the
package, where ``fastlimit demo`` uses it too."""

import time
from concurrent.futures import ThreadPoolExecutor

from fastlimit.cli.servers import Server, free_port, request

__all__ = ["Server", "all_workers_up", "call_wsgi", "free_port", "from_workers"]

# What the multi-worker test apps do per request so that concurrent
# requests must be answered by several workers (a worker is busy meanwhile),
# and the header they name their worker in.
WORK_S = 0.02
WORKER_HEADER = "x-worker-pid"


def all_workers_up(port, workers, *, path="/healthz", timeout=60.0):
    """Send ``path`` (an unlimited route that keeps its worker busy for
    WORK_S) until ``workers`` distinct workers have answered: a server's
    workers load the application one by one, and the first up would
    otherwise answer everything."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(2 * workers) as pool:
        while len(seen) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only workers {sorted(seen)} of {workers} answered")
            replies = pool.map(lambda _: request(port, "GET", path), range(2 * workers))
            seen |= {r.headers.get(WORKER_HEADER) for r in replies} - {None}
    return seen


def from_workers(port, method, path, count, *, concurrency=8, headers=None):
    """``count`` requests, ``concurrency`` at a time, and the set of
    workers (``x-worker-pid``) that answered them: a test of exactness
    across workers asserts there were several."""
    with ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(lambda _: request(port, method, path, headers=headers),
                                range(count)))
    return replies, {r.headers.get(WORKER_HEADER) for r in replies} - {None}


def call_wsgi(app, environ, start_response):
    """Run a WSGI app the way a server does: read the body, then close it
    if it can be closed (PEP 3333)."""
    result = app(environ, start_response)
    try:
        return b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
