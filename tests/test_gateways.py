"""The gateway configurations of docs/GATEWAYS.md, run for real: nginx and Caddy on a free port, in front of a small
upstream that echoes the headers it receives, asking a served keystile (`/v1/auth`) about every request.

The configurations are the files under docs/gateways/ with their three addresses replaced; nothing else is changed,
so what passes here is what the docs give. A missing nginx or caddy skips these tests, and fails them in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import PASSWORD
from tests.process import KeystileServer, free_port

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "docs" / "gateways"
GATEWAYS = ("nginx", "caddy")
READY_SECONDS = 30.0
STOP_SECONDS = 10.0
# The addresses the documented configurations use, and what the tests put in their place.
DOC_KEYSTILE = "127.0.0.1:8000"
DOC_APP = "127.0.0.1:9000"


# --- the upstream: echoes what reached it ------------------------------------------------------------------------


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with what it received: method, path, header fields (all of them, in order), body size."""

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        answer = json.dumps(
            {
                "echo": True,
                "method": self.command,
                "path": self.path,
                "headers": [[name.lower(), value] for name, value in self.headers.items()],
                "body_length": len(body),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _echo

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows the test's output, not the upstream's access log."""


@contextmanager
def echo_upstream() -> Iterator[str]:
    """The echoing upstream in a thread of the test process; its address (host:port)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def seen_by_upstream(response: httpx.Response) -> dict[str, list[str]]:
    """The header fields the upstream received, by lower-case name (every value of a repeated field)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["echo"] is True
    fields: dict[str, list[str]] = {}
    for name, value in body["headers"]:
        fields.setdefault(name, []).append(value)
    return fields


# --- keystile, served with /v1/auth --------------------------------------------------------------------------------


class GatewayKeystile(KeystileServer):
    """The served app with the forward-auth router (tests/gateway_app.py), under uvicorn as `keystile serve` runs it."""

    def start(self) -> None:
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}
        env = inherited | {"PYTHONPATH": str(ROOT)} | self.env
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.gateway_app:create",
            "--factory",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--no-proxy-headers",  # X-Forwarded-For is believed from KEYSTILE_TRUSTED_PROXIES only, by keystile
            "--no-server-header",
            "--log-level",
            "warning",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_healthy()


@contextmanager
def served_keystile(directory: Path, sqlite_template: Path, **settings: str) -> Iterator[KeystileServer]:
    database = directory / "keystile.db"
    shutil.copyfile(sqlite_template, database)
    env = {
        "KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY,
        "KEYSTILE_TRUSTED_PROXIES": "127.0.0.1",  # the gateway
    } | settings
    with GatewayKeystile(env, cwd=directory) as server:
        yield server


class Owner:
    """One registered user of a served keystile, issuing keys through its HTTP API."""

    def __init__(self, keystile_url: str, email: str = "gateway@example.com") -> None:
        self.http = httpx.Client(base_url=keystile_url, timeout=10.0)
        assert self.http.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
        token = self.http.post("/auth/token", data={"username": email, "password": PASSWORD})
        assert token.status_code == 200, token.text
        self.headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        self.id = self.http.get("/users/me", headers=self.headers).json()["id"]

    def issue(self, **body: Any) -> dict[str, Any]:
        created = self.http.post("/keys/", json={"name": "gateway", **body}, headers=self.headers)
        assert created.status_code == 201, created.text
        return dict(created.json())

    def close(self) -> None:
        self.http.close()


# --- the gateways ----------------------------------------------------------------------------------------------------


def replaced(text: str, old: str, new: str) -> str:
    """`text` with its one occurrence of `old` replaced: a documented config that changed shape fails loudly."""
    assert text.count(old) == 1, f"expected one {old!r} in the documented configuration"
    return text.replace(old, new)


def nginx_command(directory: Path, port: int, keystile: str, app: str) -> list[str]:
    server = (CONFIGS / "nginx.conf").read_text()
    server = replaced(server, f"server {DOC_KEYSTILE};", f"server {keystile};")
    server = replaced(server, f"server {DOC_APP};", f"server {app};")
    server = replaced(server, "listen 8080;", f"listen 127.0.0.1:{port};")
    (directory / "server.conf").write_text(server)
    # Everything nginx writes stays in `directory`; as root, workers run as root to reach it (pytest's tmp dirs are
    # private to their owner).
    user = "user root;\n" if os.geteuid() == 0 else ""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp_paths = "".join(f"    {kind}_temp_path {directory / kind};\n" for kind in kinds)
    (directory / "nginx.conf").write_text(
        f"{user}pid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'} info;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    access_log {directory / 'access.log'};\n{temp_paths}"
        f"    include {directory / 'server.conf'};\n}}\n"
    )
    return ["nginx", "-p", str(directory), "-c", str(directory / "nginx.conf"), "-g", "daemon off;"]


def caddy_command(directory: Path, port: int, keystile: str, app: str) -> list[str]:
    site = (CONFIGS / "Caddyfile").read_text()
    site = replaced(site, f"forward_auth {DOC_KEYSTILE} {{", f"forward_auth {keystile} {{")
    site = replaced(site, f"reverse_proxy {DOC_APP} {{", f"reverse_proxy {app} {{")
    site = replaced(site, "\n:8080 {", f"\nhttp://127.0.0.1:{port} {{")
    (directory / "Caddyfile").write_text("{\n\tadmin off\n}\n\n" + site)
    return ["caddy", "run", "--config", str(directory / "Caddyfile"), "--adapter", "caddyfile"]


COMMANDS = {"nginx": nginx_command, "caddy": caddy_command}


@contextmanager
def gateway(kind: str, directory: Path, keystile: str, app: str) -> Iterator[str]:
    """`kind` running the documented configuration on a free port; its base URL."""
    if shutil.which(kind) is None:
        backends.unavailable(kind, FileNotFoundError(f"{kind} is not installed"))
    directory.mkdir()
    port = free_port()
    command = COMMANDS[kind](directory, port, keystile, app)
    env = os.environ | {"XDG_CONFIG_HOME": str(directory), "XDG_DATA_HOME": str(directory), "HOME": str(directory)}
    log_path = directory / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_listening(process, url, log_path)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_listening(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the gateway exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            httpx.get(url, timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.05)  # readiness polling of a child process, bounded by the deadline above
            continue
        return
    pytest.fail(f"the gateway did not answer within {READY_SECONDS} s:\n{log_path.read_text(errors='replace')}")


class Stack:
    """A gateway in front of the echoing upstream, asking a served keystile."""

    def __init__(self, url: str, keystile_url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10.0)
        self.keystile_url = keystile_url

    @cached_property
    def owner(self) -> Owner:
        """A user of the served keystile, registered on first use."""
        return Owner(self.keystile_url)

    def close(self) -> None:
        self.http.close()
        if "owner" in self.__dict__:
            self.owner.close()


@contextmanager
def stack(kind: str, directory: Path, sqlite_template: Path, **settings: str) -> Iterator[Stack]:
    with ExitStack() as resources:
        app = resources.enter_context(echo_upstream())
        keystile = resources.enter_context(served_keystile(directory, sqlite_template, **settings))
        url = resources.enter_context(gateway(kind, directory / kind, f"127.0.0.1:{keystile.port}", app))
        running = Stack(url, keystile.url)
        resources.callback(running.close)
        yield running


@pytest.fixture(scope="module", params=GATEWAYS)
def through(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path
) -> Iterator[Stack]:
    kind: str = request.param
    with stack(kind, tmp_path_factory.mktemp(f"gateway-{kind}"), sqlite_template) as running:
        yield running


# --- the tests -------------------------------------------------------------------------------------------------------


def key(created: dict[str, Any]) -> dict[str, str]:
    return {"X-API-Key": created["key"]}


def test_no_key_is_401_and_never_reaches_the_upstream(through: Stack) -> None:
    response = through.http.get("/orders")

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "APIKey"
    assert "echo" not in response.json()
    assert not [name for name in response.headers if name.startswith("x-keystile-")]


def test_an_invalid_key_is_401(through: Stack) -> None:
    response = through.http.get("/orders", headers={"X-API-Key": "ks_not_a_key"})

    assert response.status_code == 401
    assert "echo" not in response.json()


def test_a_valid_key_reaches_the_upstream_with_its_identity_and_without_the_key(through: Stack) -> None:
    created = through.owner.issue(scopes=["read", "admin"])

    response = through.http.post("/orders?page=2", headers=key(created), json={"item": 1})

    seen = seen_by_upstream(response)
    assert response.json()["method"] == "POST"
    assert response.json()["path"] == "/orders?page=2"
    assert seen["x-keystile-key-id"] == [str(created["id"])]
    assert seen["x-keystile-owner-id"] == [str(through.owner.id)]
    assert seen["x-keystile-scopes"] == ["admin read"]
    assert "x-api-key" not in seen


def test_a_scope_required_by_the_location_is_checked(through: Stack) -> None:
    admin = through.owner.issue(scopes=["admin"])
    reader = through.owner.issue(scopes=["read"])

    allowed = through.http.get("/admin/users", headers=key(admin))
    refused = through.http.get("/admin/users", headers=key(reader))

    assert seen_by_upstream(allowed)["x-keystile-scopes"] == ["admin"]
    assert refused.status_code == 403
    assert "echo" not in refused.json()


def test_the_clients_query_string_changes_nothing_in_the_check(through: Stack) -> None:
    plain = through.owner.issue()

    # Neither a key nor scopes in the client's query string reach the check: no key is 401, the key's own is enough.
    assert through.http.get(f"/orders?api_key={plain['key']}").status_code == 401
    assert through.http.get("/orders?scopes=admin", headers=key(plain)).status_code == 200
    assert through.http.get("/admin/users?scopes=", headers=key(plain)).status_code == 403


def test_a_rate_limited_key_is_429_with_retry_after_at_the_client(through: Stack) -> None:
    created = through.owner.issue(rate_limit={"limit": 1, "window_seconds": 3600})

    first = through.http.get("/orders", headers=key(created))
    second = through.http.get("/orders", headers=key(created))

    seen_by_upstream(first)
    assert second.status_code == 429
    assert 0 < int(second.headers["retry-after"]) <= 3600
    assert second.headers["ratelimit-policy"] == '"key";q=1;w=3600'
    assert second.headers["ratelimit"].startswith('"key";r=0;')
    assert "echo" not in second.json()


def test_a_client_cannot_inject_identity_fields(through: Stack) -> None:
    created = through.owner.issue()  # no scopes: keystile answers an empty X-Keystile-Scopes
    forged = {
        "X-Keystile-Key-Id": "999999",
        "X-Keystile-Owner-Id": "999999",
        "X-Keystile-Scopes": "admin",
        "x-keystile-key-id": "999998",
    }

    seen = seen_by_upstream(through.http.get("/orders", headers={**key(created), **forged}))

    assert seen["x-keystile-key-id"] == [str(created["id"])]
    assert seen["x-keystile-owner-id"] == [str(through.owner.id)]
    assert seen.get("x-keystile-scopes", [""]) == [""]  # nginx sends no empty field, Caddy an empty one


def test_a_repeated_key_field_is_400(through: Stack) -> None:
    """keystile refuses a request whose X-API-Key is repeated; nginx would make that 400 a 500."""
    created = through.owner.issue()

    response = through.http.get("/orders", headers=[("X-API-Key", created["key"]), ("X-API-Key", "ks_other")])

    assert response.status_code == 400


def test_a_body_over_keystiles_limit_reaches_the_upstream(through: Stack) -> None:
    """The check carries no body: the app behind the gateway gets bodies keystile's own 64 KiB guard would refuse."""
    created = through.owner.issue()

    response = through.http.put("/upload", headers=key(created), content=b"x" * 200_000)

    seen_by_upstream(response)
    assert response.json()["body_length"] == 200_000


def test_the_client_address_reaches_keystile_through_the_gateway(through: Stack) -> None:
    here = through.owner.issue(ip_allowlist=["127.0.0.1"])
    elsewhere = through.owner.issue(ip_allowlist=["192.0.2.0/24"])

    assert through.http.get("/orders", headers=key(here)).status_code == 200
    assert through.http.get("/orders", headers=key(elsewhere)).status_code == 403


def test_each_request_counts_as_a_use_of_the_key(through: Stack) -> None:
    created = through.owner.issue()
    for _ in range(3):
        seen_by_upstream(through.http.get("/orders", headers=key(created)))

    read = through.owner.http.get(f"/keys/{created['id']}", headers=through.owner.headers)

    assert read.json()["use_count"] == 3


@pytest.mark.parametrize("kind", GATEWAYS)
def test_keystile_unavailable_is_503_with_retry_after_at_the_client(
    kind: str, tmp_path: Path, sqlite_template: Path
) -> None:
    """Rate limiting down with RATE_LIMIT_FAILURE=closed: keystile answers 503, which nginx would make a 500.

    A key that does not verify is enough: its failed attempt is counted by the limiter, which refuses to guess.
    """
    settings = {"KEYSTILE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "KEYSTILE_RATE_LIMIT_FAILURE": "closed"}
    with stack(kind, tmp_path, sqlite_template, **settings) as running:
        response = running.http.get("/orders", headers={"X-API-Key": "ks_not_a_key"})

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "echo" not in response.json()
