"""Leak intake: true and false positives, revoke or notify, the audit and the key.leaked event; GitHub's signed
partner alerts, valid and forged."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import MakeClient
from tests.events.helpers import add_webhook, delivering_client
from tests.events.receiver import Receiver, verify_signature
from tests.helpers import (
    KeystileClient,
    admin_headers,
    create_key,
    key_header,
    stored_key,
    user_headers,
    wrong_checksum,
)

KEY_IDENTIFIER = "f9525bf080f75b3506ca1ead061add62b8633a346606dc5fe544e29231c6ee0d"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


async def audit_actions(client: KeystileClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    return [event for event in (await client.get("/audit", headers=headers)).json() if event["action"] == "key.leaked"]


async def test_a_reported_real_key_is_revoked_audited_and_announced_and_the_rest_are_false_positives(
    make_client: MakeClient, receiver: Receiver
) -> None:
    client = await delivering_client(make_client)
    owner = await user_headers(client, "owner@example.com")
    webhook = await add_webhook(client, owner, receiver.url, ["key.leaked"])
    leaked = await create_key(client, owner, name="leaked")
    other = await create_key(client, owner, name="other")
    made_up = leaked["key"][:-49] + "A" * 43 + leaked["key"][-6:]  # right shape, wrong secret and checksum
    admin = await admin_headers(client)

    response = await client.post(
        "/v1/leaks",
        json={
            "keys": [leaked["key"], "hello world", wrong_checksum(other["key"]), made_up],
            "source": "pastebin",
            "url": "https://paste.example/abc",
        },
        headers=admin,
    )
    (event,) = await receiver.received(1)

    assert response.status_code == 200
    assert [answer["label"] for answer in response.json()] == [
        "true_positive",
        "false_positive",
        "false_positive",
        "false_positive",
    ]
    assert response.json()[0]["key_hint"] == leaked["hint"]
    assert all(
        other["key"] not in answer["key_hint"] and leaked["key"] not in answer["key_hint"] for answer in response.json()
    )
    assert (await stored_key(client, leaked["id"])).is_active is False
    assert (await stored_key(client, other["id"])).is_active is True
    assert (await client.get("/data/export", headers=key_header(leaked))).status_code == 401
    (audited,) = await audit_actions(client, owner)
    assert audited["api_key_id"] == leaked["id"]
    assert audited["detail"] == {"source": "pastebin", "url": "https://paste.example/abc", "action": "revoked"}
    assert event.json["type"] == "key.leaked"
    assert event.json["data"]["id"] == leaked["id"]
    assert event.json["data"]["leak"]["action"] == "revoked"
    assert verify_signature(webhook["secret"], event)
    assert leaked["key"].encode() not in event.body


async def test_notify_mode_reports_without_revoking(make_client: MakeClient, receiver: Receiver) -> None:
    client = await delivering_client(make_client, leak_action="notify")
    owner = await user_headers(client, "owner@example.com")
    await add_webhook(client, owner, receiver.url, ["key.leaked"])
    leaked = await create_key(client, owner)
    reporter = await create_key(client, await admin_headers(client), name="scanner", scopes=["leaks:report"])

    response = await client.post(
        "/v1/leaks", json={"keys": [leaked["key"]], "source": "gitleaks"}, headers=key_header(reporter)
    )
    (event,) = await receiver.received(1)

    assert response.json() == [{"key_hint": leaked["hint"], "label": "true_positive"}]
    assert (await stored_key(client, leaked["id"])).is_active is True
    assert event.json["data"]["leak"] == {"source": "gitleaks", "url": None, "action": "notified"}
    assert (await audit_actions(client, owner))[0]["detail"]["action"] == "notified"


async def test_only_admins_and_leaks_report_keys_may_report(make_client: MakeClient) -> None:
    client = await make_client()
    user = await user_headers(client)
    plain = await create_key(client, user)
    body = {"keys": [plain["key"]], "source": "test"}

    as_user = await client.post("/v1/leaks", json=body, headers=user)
    as_plain_key = await client.post("/v1/leaks", json=body, headers=key_header(plain))
    anonymous = await client.post("/v1/leaks", json=body)

    assert (as_user.status_code, as_plain_key.status_code, anonymous.status_code) == (403, 403, 401)
    assert (await stored_key(client, plain["id"])).is_active is True


@pytest.fixture
def github_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def keys_file(tmp_path: Path, private_key: ec.EllipticCurvePrivateKey) -> str:
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "github-keys.json"
    path.write_text(
        json.dumps({"public_keys": [{"key_identifier": KEY_IDENTIFIER, "key": pem.decode(), "is_current": True}]})
    )
    return str(path)


def signed(body: bytes, private_key: ec.EllipticCurvePrivateKey, identifier: str = KEY_IDENTIFIER) -> dict[str, str]:
    signature = private_key.sign(body, ec.ECDSA(hashes.SHA256()))
    return {
        "Github-Public-Key-Identifier": identifier,
        "Github-Public-Key-Signature": base64.b64encode(signature).decode(),
        "Content-Type": "application/json",
    }


async def test_a_github_alert_with_a_valid_signature_is_acted_on_and_answered_in_githubs_shape(
    make_client: MakeClient, tmp_path: Path, github_key: ec.EllipticCurvePrivateKey
) -> None:
    client = await make_client(github_scanning_keys=keys_file(tmp_path, github_key))
    owner = await user_headers(client)
    leaked = await create_key(client, owner)
    matches = [
        {
            "token": leaked["key"],
            "type": "keystile_api_key",
            "url": "https://github.com/o/r/blob/x/.env",
            "source": "content",
        },
        {
            "token": "ks_notarealkeyatall",
            "type": "keystile_api_key",
            "url": "https://github.com/o/r",
            "source": "commit",
        },
    ]
    body = json.dumps(matches).encode()

    response = await client.post("/v1/leaks/github", content=body, headers=signed(body, github_key))

    assert response.status_code == 200, response.text
    assert response.json() == [
        {
            "token_hash": hashlib.sha256(leaked["key"].encode()).hexdigest(),
            "token_type": "keystile_api_key",
            "label": "true_positive",
        },
        {
            "token_hash": hashlib.sha256(b"ks_notarealkeyatall").hexdigest(),
            "token_type": "keystile_api_key",
            "label": "false_positive",
        },
    ]
    assert (await stored_key(client, leaked["id"])).is_active is False
    (audited,) = await audit_actions(client, owner)
    assert audited["actor_id"] is None
    assert audited["detail"]["source"] == "github:content"


@pytest.mark.parametrize(
    "forgery", ["other-key", "changed-body", "unknown-identifier", "no-signature", "garbage-signature"]
)
async def test_a_github_alert_without_a_valid_signature_is_401_and_changes_nothing(
    make_client: MakeClient, tmp_path: Path, github_key: ec.EllipticCurvePrivateKey, forgery: str
) -> None:
    client = await make_client(github_scanning_keys=keys_file(tmp_path, github_key))
    owner = await user_headers(client)
    leaked = await create_key(client, owner)
    body = json.dumps([{"token": leaked["key"], "type": "keystile_api_key", "url": "u", "source": "content"}]).encode()
    headers = signed(body, github_key)
    if forgery == "other-key":
        headers = signed(body, ec.generate_private_key(ec.SECP256R1()))
    elif forgery == "changed-body":
        body = body.replace(b"content", b"commit!")
    elif forgery == "unknown-identifier":
        headers = signed(body, github_key, identifier="0" * 64)
    elif forgery == "no-signature":
        del headers["Github-Public-Key-Signature"]
    else:
        headers["Github-Public-Key-Signature"] = "not base64 at all!"

    response = await client.post("/v1/leaks/github", content=body, headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"]
    assert (await stored_key(client, leaked["id"])).is_active is True
    assert await audit_actions(client, owner) == []


async def test_the_github_route_is_404_when_no_keys_are_configured(make_client: MakeClient) -> None:
    client = await make_client()

    assert (await client.post("/v1/leaks/github", content=b"[]")).status_code == 404
