"""Real servers for end-to-end tests: started on a free 127.0.0.1 port and
stopped by the PID (and process group) we started.  The code lives in the
package, where ``fastlimit demo`` uses it too."""

from fastlimit._server import Server, free_port

__all__ = ["Server", "free_port"]
