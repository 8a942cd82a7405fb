"""A process's own HTTP endpoints (``/metrics``, ``/healthz``, ...) in a daemon thread.

The agent and the stream/policies stages serve their health the same way: a
``ThreadingHTTPServer`` off the hot path, GET only, quiet in the log. What differs is
the routing, so each passes a ``route(path) -> (status, content type, body)`` function
(``path`` without its query string) and keeps its own endpoint list.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

Route = Callable[[str], tuple[int, str, bytes]]


class EndpointServer:
    """Serves ``route`` on ``host:port`` in a daemon thread named ``thread_name``.
    Port 0 picks a free port (see :attr:`port`). ``poll_interval_s``: how often the loop
    looks for :meth:`close` (the longest ``close`` waits)."""

    def __init__(self, route: Route, *, host: str, port: int, thread_name: str,
                 poll_interval_s: float = 0.5) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, ctype, body = route(self.path.split("?", 1)[0])
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every few seconds would flood the process's log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": poll_interval_s},
                                        name=thread_name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
