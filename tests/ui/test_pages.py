"""The dashboard's pages over plain HTTP: each action changes what the API would, through the same services."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from keystile.audit.models import AuditEvent
from keystile.clock import FakeClock
from keystile.events.models import OutboxEvent
from keystile.identities.models import Identity
from keystile.keys.models import ApiKey
from keystile.ui.listing import PAGE_SIZE
from keystile.users.models import User
from keystile.webhooks.models import WebhookEndpoint
from tests.conftest import MakeClient
from tests.helpers import EXPORT, KeystileClient, make_admin
from tests.ui.pages import create_key_in_form, revealed, sign_in


def key_pk_of(html: str) -> int:
    match = re.search(r'href="/ui/keys/(\d+)"', html)
    assert match
    return int(match[1])


async def stored_key(client: KeystileClient, key_pk: int) -> ApiKey:
    async with client.keystile.session_factory() as session:
        key = await session.get(ApiKey, key_pk)
        assert key is not None
        return key


async def test_rotate_reveals_the_new_key_once_and_keeps_the_old_one_for_the_grace(client: KeystileClient) -> None:
    csrf = await sign_in(client)
    created = await create_key_in_form(client, csrf)
    old_raw, old_pk = revealed(created.text), key_pk_of(created.text)
    rotated = await client.post(f"/ui/keys/{old_pk}/rotate", data={"csrf_token": csrf, "grace": "1 hour"})
    assert rotated.status_code == 200
    assert rotated.headers["cache-control"] == "no-store"
    new_raw, new_pk = revealed(rotated.text), key_pk_of(rotated.text)
    assert new_raw != old_raw
    assert new_pk != old_pk
    for raw in (old_raw, new_raw):
        assert (await client.get(EXPORT, headers={"X-API-Key": raw})).status_code == 200
    old = await stored_key(client, old_pk)
    assert old.expires_at == client.keystile.clock() + timedelta(hours=1)
    assert (await stored_key(client, new_pk)).rotated_from == old_pk
    page = await client.get(f"/ui/keys/{new_pk}")
    assert new_raw not in page.text
    assert "Rotated from" in page.text
    again = await client.post(f"/ui/keys/{old_pk}/rotate", data={"csrf_token": csrf, "grace": "None"})
    assert again.status_code == 409
    assert "revealed-secret" not in again.text


async def test_an_unknown_grace_period_is_422_and_rotates_nothing(client: KeystileClient) -> None:
    csrf = await sign_in(client)
    key_pk = key_pk_of((await create_key_in_form(client, csrf)).text)
    response = await client.post(f"/ui/keys/{key_pk}/rotate", data={"csrf_token": csrf, "grace": "a week"})
    assert response.status_code == 422
    async with client.keystile.session_factory() as session:
        assert len(list(await session.scalars(select(ApiKey)))) == 1


async def test_disable_and_enable_stop_and_resume_the_key(client: KeystileClient) -> None:
    csrf = await sign_in(client)
    created = await create_key_in_form(client, csrf)
    raw, key_pk = revealed(created.text), key_pk_of(created.text)
    disabled = await client.post(f"/ui/keys/{key_pk}/disable", data={"csrf_token": csrf})
    assert disabled.status_code == 303
    assert disabled.headers["location"] == f"/ui/keys/{key_pk}"
    assert not (await stored_key(client, key_pk)).enabled
    assert (await client.get(EXPORT, headers={"X-API-Key": raw})).status_code == 401
    page = await client.get(f"/ui/keys/{key_pk}")
    assert "Disabled" in page.text
    assert ">Enable</button>" in page.text
    assert (await client.post(f"/ui/keys/{key_pk}/enable", data={"csrf_token": csrf})).status_code == 303
    assert (await stored_key(client, key_pk)).enabled
    assert (await client.get(EXPORT, headers={"X-API-Key": raw})).status_code == 200


async def test_revoke_asks_for_confirmation_and_revokes_nothing_before_it(client: KeystileClient) -> None:
    csrf = await sign_in(client)
    created = await create_key_in_form(client, csrf)
    raw, key_pk = revealed(created.text), key_pk_of(created.text)
    asked = await client.post(f"/ui/keys/{key_pk}/revoke", data={"csrf_token": csrf})
    assert asked.status_code == 200
    assert "Confirm revoke" in asked.text
    assert (await stored_key(client, key_pk)).is_active
    done = await client.post(f"/ui/keys/{key_pk}/revoke", data={"csrf_token": csrf, "confirm": "yes"})
    assert done.status_code == 303
    assert not (await stored_key(client, key_pk)).is_active
    assert (await client.get(EXPORT, headers={"X-API-Key": raw})).status_code == 401
    page = await client.get(f"/ui/keys/{key_pk}")
    assert "Revoked" in page.text
    assert ">Rotate</button>" not in page.text


async def test_the_keys_table_filters_by_state_and_pages(client: KeystileClient, clock: FakeClock) -> None:
    csrf = await sign_in(client)
    first = key_pk_of((await create_key_in_form(client, csrf, name="to revoke")).text)
    await client.post(f"/ui/keys/{first}/revoke", data={"csrf_token": csrf, "confirm": "yes"})
    for index in range(PAGE_SIZE):
        assert (await create_key_in_form(client, csrf, name=f"key {index:02}")).status_code == 200
    revoked = await client.get("/ui/keys?state=Revoked")
    assert "to revoke" in revoked.text
    assert "key 00" not in revoked.text
    active = await client.get("/ui/keys?state=Active")
    assert "to revoke" not in active.text
    assert f"key {PAGE_SIZE - 1:02}" in active.text
    page_one = await client.get("/ui/keys")
    assert "Next page" in page_one.text
    assert "to revoke" not in page_one.text
    page_two = await client.get("/ui/keys?page=2")
    assert "to revoke" in page_two.text
    assert "Previous page" in page_two.text
    stale = await client.get("/ui/keys?unused_for_days=1")
    assert "No keys." in stale.text
    clock.advance(2 * 86_400)
    await sign_in(client, register_first=False)  # the session ended meanwhile
    assert "key 00" in (await client.get("/ui/keys?unused_for_days=1")).text


async def test_the_key_page_charts_its_usage(client: KeystileClient) -> None:
    csrf = await sign_in(client)
    created = await create_key_in_form(client, csrf)
    for _ in range(3):
        assert (await client.get(EXPORT, headers={"X-API-Key": revealed(created.text)})).status_code == 200
    page = await client.get(f"/ui/keys/{key_pk_of(created.text)}")
    assert "Last 24 hours, by hour: 3 admitted, 0 refused" in page.text
    assert "Last 30 days, by day: 3 admitted, 0 refused" in page.text
    assert page.text.count('class="bar-valid"') == 2
    assert ">3</td>" in (await client.get("/ui/keys")).text  # uses


async def test_identities_are_created_edited_and_offered_to_new_keys(client: KeystileClient) -> None:
    csrf = await sign_in(client)
    data = {"csrf_token": csrf, "external_id": "acme", "rate_limit": "10", "window_seconds": "60", "quota": "500"}
    assert (await client.post("/ui/identities/new", data=data)).status_code == 303
    duplicate = await client.post("/ui/identities/new", data=data)
    assert duplicate.status_code == 422
    assert "already have an identity" in duplicate.text
    async with client.keystile.session_factory() as session:
        identity = (await session.scalars(select(Identity))).one()
    listing = await client.get("/ui/identities")
    assert "acme" in listing.text
    assert "10 per 60 s" in listing.text
    edited = await client.post(
        f"/ui/identities/{identity.id}", data={"csrf_token": csrf, "external_id": "acme-corp", "quota": "7"}
    )
    assert edited.status_code == 303
    async with client.keystile.session_factory() as session:
        identity = (await session.scalars(select(Identity))).one()
    assert (identity.external_id, identity.quota_remaining, identity.rate_limit) == ("acme-corp", 7, None)
    created = await create_key_in_form(client, csrf, identity_id=str(identity.id))
    assert (await stored_key(client, key_pk_of(created.text))).identity_id == identity.id
    assert "acme-corp" in (await client.get("/ui/keys")).text


async def test_a_webhook_secret_is_revealed_once_and_a_test_send_is_queued(make_client: MakeClient) -> None:
    client = await make_client(webhook_allow_private=True)
    csrf = await sign_in(client)
    data = {"csrf_token": csrf, "url": "http://127.0.0.1:9/hook", "events": ["key.created", "key.revoked"]}
    created = await client.post("/ui/webhooks/new", data=data)
    assert created.status_code == 200
    assert created.headers["cache-control"] == "no-store"
    secret = revealed(created.text)
    assert secret.startswith("whsec_")
    webhook_id = int(re.search(r'href="/ui/webhooks/(\d+)"', created.text)[1])  # type: ignore[index]
    for path in ("/ui/webhooks", f"/ui/webhooks/{webhook_id}"):
        page = await client.get(path)
        assert page.status_code == 200
        assert secret not in page.text
    sent = await client.post(f"/ui/webhooks/{webhook_id}/test", data={"csrf_token": csrf})
    assert sent.status_code == 303
    async with client.keystile.session_factory() as session:
        types = list(await session.scalars(select(OutboxEvent.type).where(OutboxEvent.endpoint_id == webhook_id)))
    assert types == ["webhook.test"]
    refused = await client.post("/ui/webhooks/new", data=data | {"events": []})
    assert refused.status_code == 422


async def test_admins_see_every_key(client: KeystileClient) -> None:
    csrf = await sign_in(client, "bob@example.com")
    await create_key_in_form(client, csrf, name="bobs key")
    client.cookies.clear()
    await sign_in(client, "admin@example.com")
    await make_admin(client, "admin@example.com")
    page = await client.get("/ui/admin/keys")
    assert page.status_code == 200
    assert "bobs key" in page.text
    assert "All keys" in (await client.get("/ui/keys")).text  # the nav links the admin page


async def test_the_audit_page_lists_the_visitors_events(client: KeystileClient) -> None:
    csrf = await sign_in(client)
    await create_key_in_form(client, csrf)
    page = await client.get("/ui/audit")
    assert page.status_code == 200
    assert "key.created" in page.text
    assert "user.registered" in page.text


async def identity_in_form(client: KeystileClient, csrf: str, external_id: str = "acme") -> Identity:
    created = await client.post("/ui/identities/new", data={"csrf_token": csrf, "external_id": external_id})
    assert created.status_code == 303
    async with client.keystile.session_factory() as session:
        return (await session.scalars(select(Identity).where(Identity.external_id == external_id))).one()


async def test_the_identity_page_lists_its_keys_and_charts_its_usage(client: KeystileClient) -> None:
    csrf = await sign_in(client)
    identity = await identity_in_form(client, csrf)
    mine = await create_key_in_form(client, csrf, name="acme key", identity_id=str(identity.id))
    await create_key_in_form(client, csrf, name="unrelated key")
    for _ in range(2):
        assert (await client.get(EXPORT, headers={"X-API-Key": revealed(mine.text)})).status_code == 200
    page = await client.get(f"/ui/identities/{identity.id}")
    assert page.status_code == 200
    assert "<h1>acme</h1>" in page.text
    assert f'<a href="/ui/keys/{key_pk_of(mine.text)}">acme key</a>' in page.text
    assert "unrelated key" not in page.text
    assert re.search(r'data-label="State"><span class="state state-active">Active</span>', page.text)
    assert '<td data-label="Uses">2</td>' in page.text
    assert "Last 24 hours, by hour: 2 admitted, 0 refused" in page.text
    assert "Last 30 days, by day: 2 admitted, 0 refused" in page.text
    assert page.text.count('class="bar-valid"') == 2
    assert ">Save identity</button>" in page.text
    refused = await client.post(f"/ui/identities/{identity.id}", data={"csrf_token": csrf, "external_id": ""})
    assert refused.status_code == 422
    assert "acme key" in refused.text  # the whole page again, with the form's errors
    async with client.keystile.session_factory() as session:
        assert (await session.get(Identity, identity.id)).external_id == "acme"  # type: ignore[union-attr]


async def test_another_users_identity_page_is_404(client: KeystileClient) -> None:
    identity = await identity_in_form(client, await sign_in(client))
    client.cookies.clear()
    await sign_in(client, "mallory@example.com")
    response = await client.get(f"/ui/identities/{identity.id}")
    assert response.status_code == 404
    assert "acme" not in response.text


async def test_admins_see_every_user_with_their_key_count(client: KeystileClient) -> None:
    csrf = await sign_in(client, "bob@example.com")
    for name in ("one", "two"):
        await create_key_in_form(client, csrf, name=name)
    assert (await client.get("/ui/admin/users")).status_code == 403
    client.cookies.clear()
    await sign_in(client, "admin@example.com")
    await make_admin(client, "admin@example.com")
    page = await client.get("/ui/admin/users")
    assert page.status_code == 200
    rows = re.findall(
        r'data-label="Email">([^<]+)</td>\s*<td data-label="Admin">(\w+)</td>.*?data-label="Keys">(\d+)</td>',
        page.text,
        re.DOTALL,
    )
    assert rows == [("bob@example.com", "No", "2"), ("admin@example.com", "Yes", "0")]
    assert 'href="/ui/admin/users"' in (await client.get("/ui/keys")).text


async def test_an_admin_revokes_anyones_key_after_confirming_and_is_the_recorded_actor(client: KeystileClient) -> None:
    bob_csrf = await sign_in(client, "bob@example.com")
    created = await create_key_in_form(client, bob_csrf, name="bobs key")
    raw, key_pk = revealed(created.text), key_pk_of(created.text)
    as_bob = await client.post(f"/ui/admin/keys/{key_pk}/revoke", data={"csrf_token": bob_csrf, "confirm": "yes"})
    assert as_bob.status_code == 403
    assert (await stored_key(client, key_pk)).is_active
    client.cookies.clear()
    csrf = await sign_in(client, "admin@example.com")
    await make_admin(client, "admin@example.com")
    listed = await client.get("/ui/admin/keys")
    assert 'aria-label="Revoke bobs key"' in listed.text
    asked = await client.post(f"/ui/admin/keys/{key_pk}/revoke", data={"csrf_token": csrf})
    assert asked.status_code == 200
    assert "Confirm revoke" in asked.text
    assert f'action="/ui/admin/keys/{key_pk}/revoke"' in asked.text
    assert (await stored_key(client, key_pk)).is_active
    done = await client.post(f"/ui/admin/keys/{key_pk}/revoke", data={"csrf_token": csrf, "confirm": "yes"})
    assert done.status_code == 303
    assert done.headers["location"] == "/ui/admin/keys"
    assert not (await stored_key(client, key_pk)).is_active
    assert (await client.get(EXPORT, headers={"X-API-Key": raw})).status_code == 401
    async with client.keystile.session_factory() as session:
        admin_id = await session.scalar(select(User.id).where(User.email == "admin@example.com"))
        events = list(await session.scalars(select(AuditEvent).where(AuditEvent.action == "key.revoked")))
    assert [(event.api_key_id, event.actor_id) for event in events] == [(key_pk, admin_id)]
    assert 'aria-label="Revoke bobs key"' not in (await client.get("/ui/admin/keys")).text
    missing = await client.post("/ui/admin/keys/999999/revoke", data={"csrf_token": csrf, "confirm": "yes"})
    assert missing.status_code == 404


async def stored_webhook(client: KeystileClient, webhook_id: int) -> WebhookEndpoint | None:
    async with client.keystile.session_factory() as session:
        return await session.get(WebhookEndpoint, webhook_id)


async def webhook_in_form(client: KeystileClient, csrf: str, url: str = "http://127.0.0.1:9/hook") -> int:
    data = {"csrf_token": csrf, "url": url, "events": ["key.created"], "description": "first"}
    created = await client.post("/ui/webhooks/new", data=data)
    assert created.status_code == 200, created.text
    return int(re.search(r'href="/ui/webhooks/(\d+)"', created.text)[1])  # type: ignore[index]


async def test_a_webhook_is_edited_disabled_enabled_and_deleted_after_confirming(make_client: MakeClient) -> None:
    client = await make_client(webhook_allow_private=True)
    csrf = await sign_in(client)
    webhook_id = await webhook_in_form(client, csrf)
    page = await client.get(f"/ui/webhooks/{webhook_id}")
    assert 'value="http://127.0.0.1:9/hook"' in page.text  # the edit form starts from the stored values
    changes = {"url": "http://127.0.0.1:9/other", "events": ["key.revoked", "key.rotated"], "description": ""}
    edited = await client.post(f"/ui/webhooks/{webhook_id}/edit", data={"csrf_token": csrf} | changes)
    assert edited.status_code == 303
    row = await stored_webhook(client, webhook_id)
    assert row is not None
    assert (row.url, row.events, row.description) == ("http://127.0.0.1:9/other", ["key.revoked", "key.rotated"], None)
    refused = await client.post(f"/ui/webhooks/{webhook_id}/edit", data={"csrf_token": csrf, "url": "x", "events": []})
    assert refused.status_code == 422
    assert 'id="events-error"' in refused.text
    assert (await stored_webhook(client, webhook_id)).url == "http://127.0.0.1:9/other"  # type: ignore[union-attr]

    assert (await client.post(f"/ui/webhooks/{webhook_id}/disable", data={"csrf_token": csrf})).status_code == 303
    assert not (await stored_webhook(client, webhook_id)).enabled  # type: ignore[union-attr]
    assert ">Enable</button>" in (await client.get(f"/ui/webhooks/{webhook_id}")).text
    assert (await client.post(f"/ui/webhooks/{webhook_id}/test", data={"csrf_token": csrf})).status_code == 409
    assert (await client.post(f"/ui/webhooks/{webhook_id}/enable", data={"csrf_token": csrf})).status_code == 303
    assert (await stored_webhook(client, webhook_id)).enabled  # type: ignore[union-attr]

    asked = await client.post(f"/ui/webhooks/{webhook_id}/delete", data={"csrf_token": csrf})
    assert asked.status_code == 200
    assert ">Confirm delete</button>" in asked.text
    assert await stored_webhook(client, webhook_id) is not None
    deleted = await client.post(f"/ui/webhooks/{webhook_id}/delete", data={"csrf_token": csrf, "confirm": "yes"})
    assert deleted.status_code == 303
    assert deleted.headers["location"] == "/ui/webhooks"
    assert await stored_webhook(client, webhook_id) is None
    assert (await client.get(f"/ui/webhooks/{webhook_id}")).status_code == 404


async def test_a_webhook_edit_to_a_private_address_is_422_on_the_form_and_changes_nothing(
    client: KeystileClient,
) -> None:
    csrf = await sign_in(client)
    webhook_id = await webhook_in_form(client, csrf, url="http://93.184.215.14/hook")
    changes = {"url": "http://127.0.0.1:9/hook", "events": ["key.revoked"], "description": "changed"}
    refused = await client.post(f"/ui/webhooks/{webhook_id}/edit", data={"csrf_token": csrf} | changes)
    assert refused.status_code == 422
    assert 'id="url-error"' in refused.text
    assert 'value="http://127.0.0.1:9/hook"' in refused.text  # what was typed, to correct
    row = await stored_webhook(client, webhook_id)
    assert row is not None
    assert (row.url, row.events, row.description) == ("http://93.184.215.14/hook", ["key.created"], "first")


async def test_another_users_webhook_cannot_be_changed(make_client: MakeClient) -> None:
    client = await make_client(webhook_allow_private=True)
    webhook_id = await webhook_in_form(client, await sign_in(client))
    client.cookies.clear()
    csrf = await sign_in(client, "mallory@example.com")
    for action in ("edit", "disable", "delete"):
        data = {"csrf_token": csrf, "confirm": "yes", "url": "http://127.0.0.1:9/x", "events": ["key.created"]}
        assert (await client.post(f"/ui/webhooks/{webhook_id}/{action}", data=data)).status_code == 404
    row = await stored_webhook(client, webhook_id)
    assert row is not None
    assert (row.url, row.enabled) == ("http://127.0.0.1:9/hook", True)
