"""A real HTTP server on loopback that records what it is sent: the webhook receiver of the
tests and the benchmarks.

    with Receiver() as hook:                                # answers 200 to everything
        register(hook.url); ...
        hook.of_type("analysis.succeeded")[0].headers["webhook-id"]

    Receiver(Reply(500, b"db down"), Reply(200))            # replies in order, the last one repeats
    Receiver(500, 500, 200, per_message=True)               # the n-th attempt of each webhook-id
    Receiver(Reply(200, delay_s=3))                          # slow; also drip_headers_s, tls=, host=

Every request is kept as a `Recorded` (method, path, lower-case headers, body, arrival time,
status answered). `holding.set()` makes it read requests and keep them waiting without an
answer until `release` is set (the connection is then dropped); `stop()` and `start()` take
it down and bring it back on the same port.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Reply:
    """What to answer: status, body and headers, after `delay_s`; with `drip_headers_s`, a
    status line and then one header byte every 50 ms for that long (a receiver that never finishes)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drip_headers_s: float = 0.0


@dataclass
class Recorded:
    """One request as received; `status` is what was answered (None: held, never answered)."""

    method: str
    path: str
    headers: dict[str, str]
    body: str
    received_at: float  # time.monotonic()
    status: int | None = None

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def type(self) -> str | None:
        """The webhook's event type (`type` of a JSON body), if any."""
        try:
            body = self.json()
        except ValueError:
            return None
        return body.get("type") if isinstance(body, dict) else None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        self.server.receiver._handle(self)

    def do_GET(self) -> None:
        self.server.receiver._handle(self)

    def do_PUT(self) -> None:
        self.server.receiver._handle(self)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], receiver: Receiver):
        self.receiver = receiver
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.receiver._connected(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.receiver._disconnected(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up early (timeouts, a cut excerpt, a killed worker) are part of the tests.
        if not isinstance(sys.exception(), OSError):
            super().handle_error(request, client_address)


class Receiver:
    """A loopback HTTP server answering from a script and recording every request."""

    def __init__(
        self,
        *replies: Reply | int,
        per_message: bool = False,
        host: str = LOOPBACK,
        port: int = 0,
        path: str = "/hooks",
        tls: ssl.SSLContext | None = None,
        keep_alive: bool = False,
    ):
        """`replies`: answered in order, the last repeating (an int is `Reply(status)`); with
        `per_message`, the n-th request carrying the same webhook-id gets the n-th reply.
        `keep_alive`: HTTP/1.1 persistent connections (else one request per connection)."""
        self.replies = [Reply(r) if isinstance(r, int) else r for r in replies] or [Reply(200)]
        self.per_message = per_message
        self.host, self.port, self.path = host, port, path
        self.tls = tls
        self.keep_alive = keep_alive
        self.requests: list[Recorded] = []
        self.webhook_ids: list[str] = []  # in arrival order, one per request
        self.arrivals: dict[str, float] = {}  # webhook-id -> first arrival (time.monotonic())
        self.connections = 0
        self.holding, self.release = threading.Event(), threading.Event()
        self.held = 0
        self._attempts: dict[str, int] = {}
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}{self.path}"

    @property
    def count(self) -> int:
        return len(self.requests)

    def of_type(self, type_: str) -> list[Recorded]:
        """The requests whose JSON body is a webhook event of this type, in arrival order."""
        return [r for r in list(self.requests) if r.type == type_]

    # ---------------------------------------------------------------- up and down

    def start(self) -> None:
        """Listen (again: on the same port) and serve from a background thread."""
        if self._server is not None:
            return
        handler = type("Handler", (_Handler,), {"protocol_version": "HTTP/1.1" if self.keep_alive else "HTTP/1.0"})
        server = _Server((self.host, self.port), handler, self)
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.host, self.port = str(server.server_address[0]), int(server.server_address[1])
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        """Stop listening and drop the open connections: down, as far as senders can tell."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections, self._open = list(self._open), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    close = stop

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- serving

    def _connected(self, connection: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._open.add(connection)

    def _disconnected(self, connection: socket.socket) -> None:
        with self._lock:
            self._open.discard(connection)

    def _reply_for(self, request: Recorded) -> Reply:
        with self._lock:
            if self.per_message:
                n = self._attempts.get(request.webhook_id, 0)
                self._attempts[request.webhook_id] = n + 1
                return self.replies[min(n, len(self.replies) - 1)]
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def _record(self, request: Recorded) -> None:
        with self._lock:
            self.requests.append(request)
            self.webhook_ids.append(request.webhook_id)
            self.arrivals.setdefault(request.webhook_id, request.received_at)

    def _handle(self, handler: _Handler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length)
        request = Recorded(handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()},
                           raw.decode("utf-8", errors="replace"), time.monotonic())
        if len(raw) < length:
            # The sender hung up before its body was whole (a worker killed mid-send): kept as
            # received, never answered, as a real server would not process it either.
            self._record(request)
            handler.close_connection = True
            return
        if self.holding.is_set():
            with self._lock:
                self.held += 1
            self._record(request)
            self.release.wait(120)
            handler.close_connection = True
            return  # no answer: the sender never learns whether it arrived
        reply = self._reply_for(request)
        request.status = reply.status
        self._record(request)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.drip_headers_s:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            stop = time.monotonic() + reply.drip_headers_s
            while time.monotonic() < stop:
                handler.wfile.write(b"a")
                time.sleep(0.05)
            handler.close_connection = True
            return
        handler.send_response(reply.status)
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.send_header("content-length", str(len(reply.body)))
        handler.end_headers()
        handler.wfile.write(reply.body)


def blackhole(host: str = LOOPBACK) -> socket.socket:
    """A listening socket that accepts connections (the kernel completes them) and never reads
    or answers: a receiver that hangs every sender. Close it when done."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(1024)
    return sock
