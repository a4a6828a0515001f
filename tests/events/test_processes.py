"""Real `keystile serve` processes: an event survives SIGKILL while its receiver is down, and two processes on one
PostgreSQL database make each attempt once."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.events.receiver import Receiver, verify_signature
from tests.process import KeystileServer, free_port, register_and_issue_key

pytestmark = [pytest.mark.process, pytest.mark.postgres]


def server_env(database_url: str) -> dict[str, str]:
    return {
        "KEYSTILE_DATABASE_URL": database_url,
        "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY,
        "KEYSTILE_WEBHOOK_ALLOW_PRIVATE": "true",
        "KEYSTILE_WEBHOOK_POLL_SECONDS": "0.1",
        "KEYSTILE_WEBHOOK_RETRY_DELAYS": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
    }


def add_webhook(base_url: str, headers: dict[str, str], url: str) -> dict[str, Any]:
    response = httpx.post(f"{base_url}/webhooks", json={"url": url, "events": ["key.created"]}, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def wait_for_attempts(base_url: str, headers: dict[str, str], webhook_id: int, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        rows = httpx.get(f"{base_url}/webhooks/{webhook_id}/deliveries", headers=headers).json()
        if len(rows) >= count:
            return list(rows)
        assert time.monotonic() < deadline, rows
        time.sleep(0.05)  # polling another process's writes, bounded by the deadline


def test_an_event_whose_receiver_is_down_survives_sigkill_and_is_delivered_after_restart(tmp_path: Path) -> None:
    url = backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_sigkill")
    receiver = Receiver(port=free_port())  # not started: the receiver is down
    server = KeystileServer(server_env(url), cwd=tmp_path)
    server.start()
    try:
        headers, _ = register_and_issue_key(server.url)
        webhook = add_webhook(server.url, headers, receiver.url)
        created = httpx.post(f"{server.url}/keys/", json={"name": "after"}, headers=headers).json()
        (failed,) = wait_for_attempts(server.url, headers, webhook["id"], 1)[-1:]
        assert failed["error"] == "connection failed"
        assert server.process is not None
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
    finally:
        server.stop()

    with receiver:
        restarted = KeystileServer(server_env(url), cwd=tmp_path)
        with restarted:
            (delivered,) = receiver.wait_for(1)

    assert delivered.webhook_id == failed["event_id"]
    assert delivered.json["data"]["id"] == created["id"]
    assert verify_signature(webhook["secret"], delivered)


def test_two_processes_on_postgresql_deliver_each_event_once(tmp_path: Path) -> None:
    url = backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_two")
    with Receiver() as receiver, KeystileServer(server_env(url), cwd=tmp_path) as first:
        headers, _ = register_and_issue_key(first.url)
        webhook = add_webhook(first.url, headers, receiver.url)
        with KeystileServer(server_env(url), cwd=tmp_path) as second:
            count = 40
            for number in range(count):
                server = (first, second)[number % 2]
                response = httpx.post(f"{server.url}/keys/", json={"name": f"k{number}"}, headers=headers)
                assert response.status_code == 201
            received = receiver.wait_for(count)
            rows = wait_for_attempts(first.url, headers, webhook["id"], count)

            # Every delivery was recorded delivered at its first attempt, so no process has anything left to send.
            assert [(row["attempt"], row["status_code"]) for row in rows] == [(1, 200)] * count
            assert len(receiver.requests) == count
            assert len({request.webhook_id for request in received}) == count
            assert all(verify_signature(webhook["secret"], request) for request in received)
            assert [row["attempt"] for row in rows] == [1] * count
