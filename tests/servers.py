"""Real servers for end-to-end tests: started on a free 127.0.0.1 port and
stopped by the PID (and process group) we started.  The code lives in the
package, where ``fastlimit demo`` uses it too."""

from fastlimit.cli.servers import Server, free_port

__all__ = ["Server", "call_wsgi", "free_port"]


def call_wsgi(app, environ, start_response):
    """Run a WSGI app the way a server does: read the body, then close it
    if it can be closed (PEP 3333)."""
    result = app(environ, start_response)
    try:
        return b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
