"""A real `keystile serve` process on a free port, for tests where the process itself matters.

    with KeystileServer({"KEYSTILE_DATABASE_URL": url}, cwd=tmp_path) as server:
        httpx.get(f"{server.url}/healthz")
    server.log  # everything it wrote to stdout and stderr

Also `free_port()`, and `register_and_issue_key()` to set up a key through a server's HTTP API.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

from tests.helpers import PASSWORD

KEYSTILE = Path(sys.executable).with_name("keystile")
READY_SECONDS = 60.0
STOP_SECONDS = 30.0
POLL_SECONDS = 0.05


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just handed out: free now, and unlikely to be handed out again at once."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class KeystileServer:
    """`keystile serve --port <free port>` with `env` (KEYSTILE_* variables) in `cwd`; a context manager.

    Entering starts the process and waits until /healthz answers; leaving sends SIGTERM and waits for the exit.
    KEYSTILE_* variables of the test's own environment are not passed on: the server sees only `env`.
    """

    def __init__(self, env: dict[str, str], cwd: Path, *, host: str = "127.0.0.1") -> None:
        self.env = env
        self.cwd = cwd
        self.host = host
        self.port = free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log_path = cwd / f"keystile-serve-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> KeystileServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def log(self) -> str:
        """What the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def start(self) -> None:
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}
        command = [str(KEYSTILE), "serve", "--host", self.host, "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.cwd, env=inherited | self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_until_healthy()

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.returncode is not None:
                pytest.fail(f"keystile serve exited with {self.returncode}:\n{self.log}")
            if self.is_healthy():
                return
            time.sleep(POLL_SECONDS)  # readiness polling of a child process, bounded by the deadline above
        self.stop()
        pytest.fail(f"keystile serve did not answer /healthz within {READY_SECONDS} s:\n{self.log}")

    def is_healthy(self) -> bool:
        try:
            response = httpx.get(f"{self.url}/healthz", timeout=1.0)
        except httpx.TransportError:
            return False
        return response.status_code == 200 and response.json() == {"status": "ok"}

    def stop(self) -> int | None:
        """SIGTERM, then wait for the graceful exit (kill only after STOP_SECONDS); the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def register_and_issue_key(
    base_url: str, email: str = "alice@example.com", **key_body: Any
) -> tuple[dict[str, str], dict[str, Any]]:
    """Register `email` on a running server, log in and issue a key; (bearer headers, the creation response)."""
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        assert http.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        token = http.post("/auth/token", data={"username": email, "password": PASSWORD})
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        created = http.post("/keys/", json={"name": "shared", **key_body}, headers=headers)
        assert created.status_code == 201, created.text
        return headers, dict(created.json())
