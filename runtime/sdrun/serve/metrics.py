"""Counters in Prometheus' text format, and the log line of each request (route, size, steps, seconds,
status).

The route is the matched route's template (so the label set stays bounded whatever paths clients try);
a route that runs a job says its size and steps in `request.state.job`, which the log line shows.
"""

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("sdrun.serve")
UNMATCHED_ROUTE = "unmatched"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Requests by route and status, and seconds per generated image; safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, int]] = Counter()
        self._images = 0
        self._image_seconds = 0.0

    def count_request(self, route: str, status: int) -> None:
        with self._lock:
            self._requests[route, status] += 1

    def count_images(self, images: int, seconds: float) -> None:
        with self._lock:
            self._images += images
            self._image_seconds += seconds

    def render(self, queue_depths: Mapping[str, int]) -> str:
        """The exposition text (https://prometheus.io/docs/instrumenting/exposition_formats/)."""
        with self._lock:
            lines = [
                "# HELP sdrun_requests_total HTTP requests answered, by route and status.",
                "# TYPE sdrun_requests_total counter",
                *(
                    f'sdrun_requests_total{{route="{_label(route)}",status="{status}"}} {count}'
                    for (route, status), count in sorted(self._requests.items())
                ),
                "# HELP sdrun_queue_depth Jobs waiting or running, by model.",
                "# TYPE sdrun_queue_depth gauge",
                *(
                    f'sdrun_queue_depth{{model="{_label(model)}"}} {depth}'
                    for model, depth in queue_depths.items()
                ),
                "# HELP sdrun_image_seconds Seconds of generation per image made.",
                "# TYPE sdrun_image_seconds summary",
                f"sdrun_image_seconds_sum {self._image_seconds:.6f}",
                f"sdrun_image_seconds_count {self._images}",
            ]
        return "\n".join(lines) + "\n"


class RequestLog:
    """ASGI middleware: one log line and one counted request per HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            job = scope.get("state", {}).get("job", "")
            self.metrics.count_request(route, status)
            seconds = time.perf_counter() - started
            log.info("%s %s %d %.2fs%s", scope["method"], route, status, seconds, f" {job}" if job else "")
