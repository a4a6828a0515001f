"""The dashboard's security over plain HTTP (no browser): headers, cookies, CSRF, sessions, sign-in throttle."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from keystile.audit.models import AuditEvent
from keystile.clock import FakeClock
from keystile.keys.models import ApiKey
from keystile.ui import sessions
from keystile.ui.models import UiSession
from tests.conftest import MakeClient
from tests.helpers import PASSWORD, KeystileClient, make_admin, register
from tests.ui.pages import create_key_in_form, csrf_of, sign_in


async def count(client: KeystileClient, model: type[ApiKey] | type[UiSession]) -> int:
    async with client.keystile.session_factory() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_pages_send_a_strict_csp_and_no_inline_script_or_style(client: KeystileClient) -> None:
    await sign_in(client)
    for path in ("/ui/login", "/ui/keys", "/ui/keys/new", "/ui/identities", "/ui/webhooks", "/ui/audit"):
        response = await client.get(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        assert re.search(r"<script(?![^>]*\bsrc=)", response.text) is None, path
        assert " style=" not in response.text, path
        assert re.search(r"\son[a-z]+=", response.text) is None, path  # no inline event handlers


async def test_static_assets_are_served_by_keystile(client: KeystileClient) -> None:
    for path, kind in (("/ui/static/style.css", "text/css"), ("/ui/static/app.js", "javascript")):
        response = await client.get(path)
        assert response.status_code == 200
        assert kind in response.headers["content-type"]


async def test_the_session_cookie_is_httponly_lax_scoped_and_not_secure_over_http(client: KeystileClient) -> None:
    await register(client)
    form = await client.get("/ui/login")
    response = await client.post(
        "/ui/login", data={"email": "alice@example.com", "password": PASSWORD, "csrf_token": csrf_of(form.text)}
    )
    assert response.status_code == 303
    cookie = next(v for v in response.headers.get_list("set-cookie") if v.startswith(f"{sessions.COOKIE}="))
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=lax", "path=/ui"} <= attributes
    assert "secure" not in attributes
    token = cookie.split(";")[0].split("=", 1)[1]
    async with client.keystile.session_factory() as session:
        stored = (await session.scalars(select(UiSession))).one()
    assert stored.token_hash != token
    assert token not in stored.token_hash


async def test_the_session_cookie_is_secure_under_https(make_client: MakeClient) -> None:
    client = await make_client()
    client.base_url = "https://testserver"  # type: ignore[assignment]
    await register(client)
    form = await client.get("/ui/login")
    response = await client.post(
        "/ui/login", data={"email": "alice@example.com", "password": PASSWORD, "csrf_token": csrf_of(form.text)}
    )
    cookie = next(v for v in response.headers.get_list("set-cookie") if v.startswith(f"{sessions.COOKIE}="))
    assert "secure" in cookie.lower()


async def test_a_wrong_password_is_refused_audited_and_starts_no_session(client: KeystileClient) -> None:
    await register(client)
    form = await client.get("/ui/login")
    response = await client.post(
        "/ui/login", data={"email": "alice@example.com", "password": "wrong password", "csrf_token": csrf_of(form.text)}
    )
    assert response.status_code == 401
    assert "Invalid email or password" in response.text
    assert await count(client, UiSession) == 0
    async with client.keystile.session_factory() as session:
        actions = list(await session.scalars(select(AuditEvent.action)))
    assert actions.count("user.login_failed") == 1


async def test_sign_in_shares_the_login_throttle_of_auth_token(make_client: MakeClient) -> None:
    client = await make_client(login_max_failures_per_email=2)
    await register(client)
    for _ in range(2):
        assert (
            await client.post("/auth/token", data={"username": "alice@example.com", "password": "nope"})
        ).status_code == 401
    form = await client.get("/ui/login")
    response = await client.post(
        "/ui/login", data={"email": "alice@example.com", "password": PASSWORD, "csrf_token": csrf_of(form.text)}
    )
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    assert await count(client, UiSession) == 0


async def test_sign_in_without_the_forms_token_is_refused(client: KeystileClient) -> None:
    await register(client)
    response = await client.post("/ui/login", data={"email": "alice@example.com", "password": PASSWORD})
    assert response.status_code == 403
    assert await count(client, UiSession) == 0


@pytest.mark.parametrize("token", [pytest.param(None, id="missing"), pytest.param("0" * 64, id="wrong")])
async def test_a_form_without_a_valid_csrf_token_is_403_and_changes_nothing(
    client: KeystileClient, token: str | None
) -> None:
    csrf = await sign_in(client)
    created = await create_key_in_form(client, csrf)
    assert created.status_code == 200
    key_pk = int(re.search(r'href="/ui/keys/(\d+)"', created.text)[1])  # type: ignore[index]
    data = {} if token is None else {"csrf_token": token}
    for path in ("/ui/keys/new", f"/ui/keys/{key_pk}/revoke", f"/ui/keys/{key_pk}/disable", "/ui/logout"):
        response = await client.post(path, data=data | {"name": "forged", "confirm": "yes"})
        assert response.status_code == 403, path
    async with client.keystile.session_factory() as session:
        key = await session.get(ApiKey, key_pk)
        assert key is not None
        assert key.is_active
        assert key.enabled
        assert await session.scalar(select(func.count()).select_from(ApiKey)) == 1
    assert await count(client, UiSession) == 1


async def test_the_reveal_is_no_store_and_the_key_appears_in_no_other_response(client: KeystileClient) -> None:
    csrf = await sign_in(client)
    form = await client.get("/ui/keys/new")
    form_id = re.search(r'name="form_id" value="([^"]+)"', form.text)[1]  # type: ignore[index]
    data = {"name": "web key", "scopes": "read:data, write:data", "csrf_token": csrf, "form_id": form_id}
    reveal = await client.post("/ui/keys/new", data=data)
    assert reveal.status_code == 200
    assert reveal.headers["cache-control"] == "no-store"
    raw = re.search(r'id="revealed-secret"[^>]*value="([^"]+)"', reveal.text)[1]  # type: ignore[index]
    assert "Copy" in reveal.text
    assert "will not be shown again" in reveal.text
    assert (await client.get("/data/export", headers={"X-API-Key": raw})).status_code == 200
    key_pk = int(re.search(r'href="/ui/keys/(\d+)"', reveal.text)[1])  # type: ignore[index]
    for path in ("/ui/keys", f"/ui/keys/{key_pk}", "/ui/audit"):
        page = await client.get(path)
        assert page.status_code == 200, path
        assert raw not in page.text, path
    again = await client.post("/ui/keys/new", data=data)  # a reload of the reveal resubmits the form
    assert again.status_code == 409
    assert raw not in again.text
    assert "revealed-secret" not in again.text
    assert all(raw not in value for value in client.cookies.values())
    async with client.keystile.session_factory() as session:
        keys = list(await session.scalars(select(ApiKey)))
    assert [(key.name, key.scopes) for key in keys] == [("web key", ["read:data", "write:data"])]


async def test_sign_out_ends_the_session_and_its_cookie_no_longer_works(client: KeystileClient) -> None:
    csrf = await sign_in(client)
    cookie = client.cookies.get(sessions.COOKIE, path="/ui")
    response = await client.post("/ui/logout", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login"
    assert await count(client, UiSession) == 0
    client.cookies.set(sessions.COOKIE, cookie or "", path="/ui")
    replayed = await client.get("/ui/keys")
    assert replayed.status_code == 303
    assert replayed.headers["location"] == "/ui/login"


async def test_a_session_ends_when_it_expires(client: KeystileClient, clock: FakeClock) -> None:
    await sign_in(client)
    clock.advance(sessions.LIFETIME.total_seconds() + 1)
    response = await client.get("/ui/keys")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login"


async def test_root_redirects_to_sign_in_or_to_keys(client: KeystileClient) -> None:
    assert (await client.get("/ui/")).headers["location"] == "/ui/login"
    await sign_in(client)
    assert (await client.get("/ui/")).headers["location"] == "/ui/keys"


async def test_another_users_key_is_404_and_the_admin_page_403_for_others(client: KeystileClient) -> None:
    csrf = await sign_in(client, "bob@example.com")
    created = await create_key_in_form(client, csrf, name="bobs key")
    key_pk = int(re.search(r'href="/ui/keys/(\d+)"', created.text)[1])  # type: ignore[index]
    client.cookies.clear()
    csrf = await sign_in(client, "alice@example.com")
    assert (await client.get(f"/ui/keys/{key_pk}")).status_code == 404
    revoke = await client.post(f"/ui/keys/{key_pk}/revoke", data={"csrf_token": csrf, "confirm": "yes"})
    assert revoke.status_code == 404
    admin = await client.get("/ui/admin/keys")
    assert admin.status_code == 403
    assert "Only administrators" in admin.text
    async with client.keystile.session_factory() as session:
        key = await session.get(ApiKey, key_pk)
        assert key is not None
        assert key.is_active


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/ui/keys?state=Bogus", id="unknown-state"),
        pytest.param("/ui/keys?unused_for_days=0", id="zero-days"),
        pytest.param("/ui/keys?unused_for_days=99999999999999999999", id="huge-days"),
        pytest.param("/ui/keys?page=-1", id="negative-page"),
        pytest.param("/ui/audit?page=abc", id="page-not-a-number"),
        pytest.param("/ui/keys/99999999999", id="id-out-of-range"),
        pytest.param("/ui/keys/abc", id="id-not-a-number"),
    ],
)
async def test_bad_query_or_path_input_is_4xx_never_5xx(client: KeystileClient, path: str) -> None:
    await sign_in(client)
    response = await client.get(path)
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"name": ""}, id="blank-name"),
        pytest.param({"name": "x" * 500}, id="long-name"),
        pytest.param({"scopes": "NOT A SCOPE"}, id="bad-scope"),
        pytest.param({"expires": "forever"}, id="unknown-expiry"),
        pytest.param({"rate_limit": "10"}, id="limit-without-window"),
        pytest.param({"rate_limit": "-1", "window_seconds": "60"}, id="negative-limit"),
        pytest.param({"quota": "1e9"}, id="quota-not-an-integer"),
        pytest.param({"quota": "9" * 40}, id="quota-too-big"),
        pytest.param({"name": "a\x00b"}, id="nul-in-name"),
    ],
)
async def test_an_invalid_create_form_is_422_with_the_form_again_and_creates_nothing(
    client: KeystileClient, fields: dict[str, str]
) -> None:
    csrf = await sign_in(client)
    response = await create_key_in_form(client, csrf, **fields)
    assert response.status_code == 422, response.text
    assert "The key was not created" in response.text
    assert await count(client, ApiKey) == 0


async def sign_in_cookie(client: KeystileClient, headers: dict[str, str]) -> str:
    await register(client)
    form = await client.get("/ui/login", headers=headers)
    # Sent by hand: the client talks plain http to the app, so its jar keeps a Secure cookie to itself.
    login_cookie = next(v for v in form.headers.get_list("set-cookie") if v.startswith("keystile_login="))
    response = await client.post(
        "/ui/login",
        data={"email": "alice@example.com", "password": PASSWORD, "csrf_token": csrf_of(form.text)},
        headers=headers | {"Cookie": login_cookie.split(";")[0]},
    )
    assert response.status_code == 303
    return next(v for v in response.headers.get_list("set-cookie") if v.startswith(f"{sessions.COOKIE}="))


@pytest.mark.parametrize(
    ("trusted", "proto", "secure"),
    [
        pytest.param(["127.0.0.1"], "https", True, id="https-from-a-trusted-proxy"),
        pytest.param(["127.0.0.1"], "https, http", True, id="left-most-hop-is-the-browsers"),
        pytest.param(["127.0.0.1"], "http", False, id="http-from-a-trusted-proxy"),
        pytest.param([], "https", False, id="https-claimed-by-an-untrusted-peer"),
        pytest.param(["10.0.0.0/8"], "https", False, id="peer-outside-the-trusted-proxies"),
    ],
)
async def test_behind_a_trusted_tls_proxy_the_session_cookie_is_secure(
    make_client: MakeClient, trusted: list[str], proto: str, secure: bool
) -> None:
    """The in-process client connects from 127.0.0.1, like a proxy on the same host."""
    client = await make_client(trusted_proxies=trusted)
    cookie = await sign_in_cookie(client, {"X-Forwarded-Proto": proto})
    assert ("secure" in {part.strip().lower() for part in cookie.split(";")[1:]}) is secure


async def test_failed_dashboard_sign_ins_lock_auth_token_too_and_each_is_audited(make_client: MakeClient) -> None:
    client = await make_client(login_max_failures_per_email=2)
    await register(client)
    for _ in range(2):
        form = await client.get("/ui/login")
        data = {"email": "alice@example.com", "password": "wrong password", "csrf_token": csrf_of(form.text)}
        assert (await client.post("/ui/login", data=data)).status_code == 401
    token = await client.post("/auth/token", data={"username": "alice@example.com", "password": PASSWORD})
    assert token.status_code == 429
    assert int(token.headers["retry-after"]) > 0
    async with client.keystile.session_factory() as session:
        failures = list(await session.scalars(select(AuditEvent).where(AuditEvent.action == "user.login_failed")))
    assert len(failures) == 2
    assert all(event.actor_id is not None and event.ip == "127.0.0.1" for event in failures)


async def test_the_new_pages_send_the_same_headers_and_no_inline_script(make_client: MakeClient) -> None:
    client = await make_client(webhook_allow_private=True)
    csrf = await sign_in(client, "admin@example.com")
    await make_admin(client, "admin@example.com")
    await client.post("/ui/identities/new", data={"csrf_token": csrf, "external_id": "acme"})
    created = await client.post(
        "/ui/webhooks/new", data={"csrf_token": csrf, "url": "http://127.0.0.1:9/h", "events": ["key.created"]}
    )
    webhook_path = re.search(r'href="(/ui/webhooks/\d+)"', created.text)[1]  # type: ignore[index]
    identity_path = re.search(r'href="(/ui/identities/\d+)"', (await client.get("/ui/identities")).text)[1]  # type: ignore[index]
    for path in ("/ui/admin/users", "/ui/admin/keys", identity_path, webhook_path):
        response = await client.get(path)
        assert response.status_code == 200, path
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["cache-control"] == "no-store"
        assert re.search(r"<script(?![^>]*\bsrc=)", response.text) is None, path
        assert " style=" not in response.text, path
        assert re.search(r"\son[a-z]+=", response.text) is None, path
    for path in (f"{webhook_path}/edit", f"{webhook_path}/delete", "/ui/admin/keys/1/revoke"):
        refused = await client.post(path, data={"confirm": "yes"})
        assert refused.status_code == 403, path
    assert (await client.get(webhook_path)).status_code == 200  # the refused delete deleted nothing
