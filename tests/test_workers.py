"""`keystile serve --workers N`: connections spread over the workers, and /metrics on any worker answers the totals
over all of them (keystile.metrics).

Which worker takes a new connection is the kernel's choice (a hash, each worker listening on its own socket). To ask
one worker in particular, a test pauses the other with SIGSTOP and retries whatever lands on the paused one's socket:
every answer then comes from the worker that runs. Pauses stay well under uvicorn's 5 s health check, which replaces
a worker that stays silent longer.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keystile.metrics import WORKER_METRICS_DIR
from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.process import KEYSTILE, POLL_SECONDS, READY_SECONDS, KeystileServer, free_port, register_and_issue_key

pytestmark = pytest.mark.process

T = TypeVar("T")

DEADLINE_SECONDS = 5.0  # workers write their snapshots every second


def until(probe: Callable[[], T], what: str | Callable[[], str], seconds: float = DEADLINE_SECONDS) -> T:
    """The first truthy answer of `probe`, polled for `seconds`; `what` it waits for, said if it never comes."""
    deadline = time.monotonic() + seconds
    while True:
        answer = probe()
        if answer:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {what() if callable(what) else what}")
        time.sleep(POLL_SECONDS)  # polling other processes, bounded by the deadline


class WorkersServer(KeystileServer):
    """`keystile serve --workers <workers>`; started once every worker serves."""

    def __init__(self, env: dict[str, str], cwd: Path, workers: int) -> None:
        super().__init__(env, cwd)
        self.workers = workers

    def __enter__(self) -> WorkersServer:
        self.start()
        return self

    def start(self) -> None:
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}
        command = [str(KEYSTILE), "serve", "--port", str(self.port), "--workers", str(self.workers)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.cwd, env=inherited | self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_until_healthy()
        if self.workers > 1:  # /healthz answered by one worker: wait until every one listens (its lifespan started)

            def listening() -> bool:
                pids = self.worker_pids()
                return len(pids) == self.workers and all(self.listening_sockets(pid) for pid in pids)

            until(listening, f"{self.workers} workers listening", READY_SECONDS)

    def worker_pids(self) -> list[int]:
        """The live uvicorn workers: children started by multiprocessing's spawn (not its resource tracker)."""
        assert self.process is not None
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError):  # a process that ended meanwhile
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                if parent == self.process.pid and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                    pids.append(int(stat.parent.name))
        return sorted(pids)

    def snapshot_directory(self) -> Path:
        """The directory `keystile serve` made for this run's snapshots, as its workers were told."""
        pid = until(self.worker_pids, "a worker process")[0]
        prefix = f"{WORKER_METRICS_DIR}=".encode()
        environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        return Path(next(entry for entry in environ if entry.startswith(prefix))[len(prefix) :].decode())

    def snapshots(self) -> list[Path]:
        return sorted(self.snapshot_directory().glob("worker-*.json"))

    def listening_sockets(self, pid: int) -> set[int]:
        """The sockets (inodes) on which process `pid` listens on this server's port."""
        listening = set()
        for table in ("tcp", "tcp6"):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == self.port and fields[3] == "0A":  # 0A: LISTEN
                    listening.add(int(fields[9]))
        held = set()
        for fd in (Path("/proc") / str(pid) / "fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                target = os.readlink(fd)
                if target.startswith("socket:[") and int(target[8:-1]) in listening:
                    held.add(int(target[8:-1]))
        return held

    def verifications_by_worker(self) -> list[dict[str, float]]:
        """Verifications by outcome in each worker's last snapshot."""
        return [
            {labels["outcome"]: value for _, labels, value in json.loads(path.read_bytes())["keystile_verifications"]}
            for path in self.snapshots()
        ]


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """Worker `pid` stopped, so that the other worker takes every new connection; resumed on the way out."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def exposition(server: KeystileServer) -> str:
    """GET /metrics, asked on new connections until one is answered: one that lands on a paused worker times out."""
    return until(lambda: _answer(f"{server.url}/metrics"), "an answer from /metrics")


def _answer(url: str) -> str:
    try:
        response = httpx.get(url, timeout=0.5)
    except httpx.TimeoutException:
        return ""
    assert response.status_code == 200
    return response.text


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return None


def valid(text: str) -> float | None:
    return sample(text, "keystile_verifications_total", outcome="VALID")


def reaching(server: KeystileServer, count: int) -> str:
    """/metrics once it counts `count` VALID verifications (polled)."""
    seen: list[float | None] = []

    def answer() -> str:
        text = exposition(server)
        seen.append(valid(text))
        return text if seen[-1] == count else ""

    return until(answer, lambda: f"{count} VALID in /metrics (the last answers: {seen[-3:]})")


def send(server: KeystileServer, key: str, count: int, status: int = 200) -> None:
    """`count` requests, each on a new connection (httpx.get opens one per call)."""
    for _ in range(count):
        assert httpx.get(f"{server.url}/data/export", headers={"X-API-Key": key}, timeout=2.0).status_code == status


def burst(server: KeystileServer, key: str, connections: int) -> None:
    """`connections` connections opened at once, as a proxy's pool or a load generator opens them, then one request
    on each."""
    request = f"GET /data/export HTTP/1.1\r\nHost: test\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n".encode()
    opened = [socket.create_connection((server.host, server.port), timeout=5.0) for _ in range(connections)]
    try:
        for connection in opened:
            connection.sendall(request)
        for connection in opened:
            assert connection.recv(64).startswith(b"HTTP/1.1 200 ")
    finally:
        for connection in opened:
            connection.close()


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    return {"KEYSTILE_REDIS_URL": redis_url, "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY}


@pytest.fixture
def postgres_env(env: dict[str, str]) -> dict[str, str]:
    """Several workers write to the database at once (usage, quotas): PostgreSQL, as a deployment would."""
    return env | {"KEYSTILE_DATABASE_URL": backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_workers")}


@pytest.mark.postgres
@pytest.mark.redis
def test_workers_listen_on_sockets_of_their_own_and_each_reports_the_totals_over_both(
    postgres_env: dict[str, str], tmp_path: Path
) -> None:
    with WorkersServer(postgres_env, tmp_path, workers=2) as server:
        first, second = server.worker_pids()
        # One accept queue each, which Linux balances new connections across (docs/PERFORMANCE.md, "Many workers").
        first_sockets, second_sockets = server.listening_sockets(first), server.listening_sockets(second)
        assert len(first_sockets) == len(second_sockets) == 1
        assert first_sockets != second_sockets

        _, created = register_and_issue_key(server.url)
        once_a_minute = {"limit": 1, "window_seconds": 60}
        _, limited = register_and_issue_key(server.url, "bob@example.com", rate_limit=once_a_minute)

        burst(server, str(created["key"]), 16)
        send(server, str(limited["key"]), 1)
        send(server, str(limited["key"]), 2, status=429)  # the limit is one count in Redis, whichever worker asks
        total = 16 + 1

        def shares() -> list[float]:  # VALID by worker, once both have written all they counted (paused, they cannot)
            workers = server.verifications_by_worker()
            return [w.get("VALID", 0) for w in workers] if sum(sum(w.values()) for w in workers) == total + 2 else []

        valid_by_worker = until(shares, "snapshots of every verification")
        assert all(share > 0 for share in valid_by_worker), f"one worker took every connection: {valid_by_worker}"
        for pid in (first, second):
            with paused(pid):  # so the other worker answers
                text = reaching(server, total)
            assert sample(text, "keystile_verification_seconds_count") == total + 2  # the 429s were timed too
            assert sample(text, "keystile_rate_limited_requests_total", reason="rate_limit") == 2
            assert "_created" not in text  # one process's start time: nothing to add up


@pytest.mark.postgres
@pytest.mark.redis
def test_totals_keep_the_counts_of_replaced_workers_and_the_snapshots_go_with_the_server(
    postgres_env: dict[str, str], tmp_path: Path
) -> None:
    with WorkersServer(postgres_env, tmp_path, workers=2) as server:
        _, created = register_and_issue_key(server.url)
        send(server, str(created["key"]), 12)
        reaching(server, 12)
        before = set(server.worker_pids())
        directory = server.snapshot_directory()

        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)  # uvicorn replaces every worker, gracefully, one after the other

        def replaced() -> bool:  # four snapshots: two old workers' last ones, two new ones' first
            return len(server.snapshots()) == 4 and not before & set(server.worker_pids())

        until(replaced, "the workers replaced", READY_SECONDS)

        assert valid(exposition(server)) == 12  # the old workers' last snapshots still count
        send(server, str(created["key"]), 3)
        reaching(server, 15)

    assert "Traceback" not in server.log
    assert not directory.exists()


@pytest.mark.redis
def test_one_worker_reports_its_own_counts_at_once_as_before(env: dict[str, str], tmp_path: Path) -> None:
    env = env | {"KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/keystile.db"}
    with WorkersServer(env, tmp_path, workers=1) as server:
        _, created = register_and_issue_key(server.url)
        send(server, str(created["key"]), 9)

        text = exposition(server)  # at once: there is nothing to add up

    assert valid(text) == 9
    assert "keystile_rate_limiter_failures_created" in text  # prometheus-client's own exposition, as ever


@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain-socket", "socket-open-to-sharing"])
def test_several_workers_refuse_an_address_already_in_use(tmp_path: Path, reuse_port: bool) -> None:
    """Even a socket that allows SO_REUSEPORT (another `keystile serve --workers N`, say) is not joined."""
    port = free_port()
    env = {
        "KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/keystile.db",
        "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY,
        "KEYSTILE_REDIS_URL": "",
    }
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}
    with socket.socket() as taken:
        if reuse_port:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()

        serve = subprocess.Popen(
            [str(KEYSTILE), "serve", "--port", str(port), "--workers", "2"],
            cwd=tmp_path,
            env=inherited | env,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: should it serve after all, its workers go with it
        )
        try:
            _, stderr = serve.communicate(timeout=READY_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.communicate()
            pytest.fail("keystile serve took the address instead of refusing it")

    assert serve.returncode == 3, stderr  # uvicorn's exit status for a failed start
    assert "Address already in use" in stderr
    assert "Traceback" not in stderr
