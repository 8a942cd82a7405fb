"""A fake inference engine's Prometheus endpoint: ``/metrics`` serves one page per
scrape from :attr:`EnginePages.pages` (the last repeats), counting scrapes in
:attr:`EnginePages.served`; any other path is a 404. Pages are written exactly as the
engine's code would expose them (see ``tests/unit/test_agent_engines.py``)."""

from __future__ import annotations

from mfuio.httpserve import EndpointServer


class EnginePages(EndpointServer):
    """Serves ``pages`` on ``127.0.0.1`` (a free port: :attr:`port`); ``start()`` it."""

    def __init__(self, pages: list[str] | None = None) -> None:
        self.pages: list[str] = list(pages or [])
        self.served = 0

        def route(path: str) -> tuple[int, str, bytes]:
            if path != "/metrics":
                return 404, "text/plain", b"not found: try /metrics\n"
            body = self.pages[min(self.served, len(self.pages) - 1)].encode()
            self.served += 1
            return 200, "text/plain; version=0.0.4", body

        super().__init__(route, host="127.0.0.1", port=0, thread_name="fake-engine",
                         poll_interval_s=0.05)
