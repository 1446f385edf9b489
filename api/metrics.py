"""The API's Prometheus metrics, never public by default (issue 22, docs/OBSERVABILITY.md).

What is served: this process's HTTP figures (the default registry) and the whole system's
backlog (``shared.metrics.BacklogCollector``: queue depth per lane, jobs by state, oldest
queued job). Where:

- on ``METRICS_PORT``, a port of its own, as the workers serve theirs (0: any free port,
  logged; unset: not served). Kubernetes scrapes the pod there; the Service and any ingress
  expose only the HTTP port, so the figures stay inside the cluster;
- on the public port at ``/metrics`` only when ``METRICS_TOKEN`` is set, and then only to
  ``Authorization: Bearer <token>`` (Prometheus' ``authorization`` scrape setting). Without a
  token that path is a 404 like any unknown one.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric

from shared.config import Settings
from shared.metrics import BacklogCollector

log = logging.getLogger(__name__)


class _ProcessFigures:
    """The default registry (this process's HTTP figures, its CPU and memory), as one collector
    of a registry that adds the backlog."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()

    def describe(self) -> list[Metric]:
        return []


class ApiMetrics:
    """The API's registry, its own port's server, and the public path's token check."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.token = settings.metrics_token.get_secret_value()
        self.backlog = BacklogCollector(settings)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_ProcessFigures())
        self.registry.register(self.backlog)
        self.server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int | None:
        """Serve the registry on ``METRICS_PORT``; the port, or None when not served. A port that
        is taken (several uvicorn workers in one pod) is logged, not fatal: the API serves on."""
        if self.settings.metrics_port is None:
            return None
        try:
            self.server, self._thread = start_http_server(self.settings.metrics_port, registry=self.registry)
        except OSError as exc:
            log.warning("API metrics not served: port %d unavailable (%s)", self.settings.metrics_port,
                        type(exc).__name__)
            return None
        port = int(self.server.server_port)
        log.info("API metrics on port %d", port)
        return port

    def allows(self, authorization: str | None) -> bool:
        """Whether the public port may answer ``/metrics`` to this ``Authorization`` header."""
        if not self.token:
            return False
        return hmac.compare_digest((authorization or "").encode(), f"Bearer {self.token}".encode())

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.backlog.close()
