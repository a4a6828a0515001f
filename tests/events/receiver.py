"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread, recording what it is sent.

    with Receiver() as receiver:            # answers 200 unless told otherwise
        receiver.answer(500, 200)           # the next two requests get 500, then 200
        await receiver.received(2)          # waits (with a deadline) until two requests arrived

Also `verify_signature`, a Standard Webhooks check written from the specification, independent of keystile's code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from tests.process import free_port

WAIT_SECONDS = 15.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


def verify_signature(secret: str, received: Received) -> bool:
    """Standard Webhooks, "Verifying webhook authenticity": HMAC-SHA256 keyed with the base64-decoded part of the
    secret after `whsec_`, over `<webhook-id>.<webhook-timestamp>.<body>`; the header lists `v1,<base64>` entries
    separated by spaces, any of which may match."""
    return signature_matches(
        secret,
        received.headers["webhook-id"],
        received.headers["webhook-timestamp"],
        received.body,
        received.headers["webhook-signature"],
    )


def signature_matches(secret: str, message_id: str, timestamp: str, body: bytes, header: str) -> bool:
    key = base64.b64decode(secret.split("_", 1)[1])
    expected = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    for entry in header.split(" "):
        version, _, encoded = entry.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(encoded), expected):
            return True
    return False


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default listen backlog, 5, refuses a dispatcher's burst of 20 connections


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.requests: list[Received] = []
        self._answers: deque[int] = deque()
        self._headers: dict[str, str] = {}
        self._changed = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def answer(self, *statuses: int, headers: dict[str, str] | None = None) -> None:
        """The statuses of the next requests, in order (then 200 again)."""
        with self._changed:
            self._answers.extend(statuses)
            self._headers = headers or {}

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._changed:
                    status = receiver._answers.popleft() if receiver._answers else 200
                    extra = dict(receiver._headers)
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    receiver._changed.notify_all()
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = WAIT_SECONDS) -> list[Received]:
        """The first `count` requests, once they arrived (AssertionError after `timeout` seconds)."""
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.requests) >= count, timeout)
            assert arrived, f"expected {count} requests, got {len(self.requests)}: {self.requests}"
            return list(self.requests[:count])

    async def received(self, count: int, within: float = WAIT_SECONDS) -> list[Received]:
        return await asyncio.to_thread(self.wait_for, count, within)
