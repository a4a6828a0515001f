"""The dashboard in a real browser: sign in, create and copy a key and use it, the one-time reveal, rotate, disable,
revoke, an admin's revoke, ownership, CSRF, sign-out, pages without JavaScript, keyboard-only use."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests import backends
from tests.helpers import EXPORT, PASSWORD
from tests.process import KeystileServer
from tests.ui.browser import chromium_path, create_admin, new_email, register, server_env

__all__ = ["chromium_path"]  # a fixture, used by name

pytestmark = [pytest.mark.process, pytest.mark.postgres]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, chromium_path: Path) -> Iterator[KeystileServer]:
    database_url = backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_ui_browser")
    cwd = tmp_path_factory.mktemp("ui-server")
    with KeystileServer(server_env(database_url), cwd) as running:
        running.env_for_cli = server_env(database_url)  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
def browser(server: KeystileServer, chromium_path: Path) -> Iterator[Browser]:
    """After the server: Playwright's sync API runs an event loop in this thread, and the server's database is
    prepared with asyncio.run(), which refuses to run inside one."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium_path))
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser, server: KeystileServer) -> Iterator[BrowserContext]:
    created = browser.new_context(base_url=server.url)
    created.set_default_timeout(10_000)
    yield created
    created.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def sign_in(page: Page, email: str, password: str = PASSWORD) -> None:
    page.goto("/ui/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def signed_in(page: Page, server: KeystileServer, label: str = "user") -> str:
    email = new_email(label)
    register(server.url, email)
    sign_in(page, email)
    expect(page.get_by_role("heading", name="Keys")).to_be_visible()
    return email


@contextlib.contextmanager
def signed_in_admin(browser: Browser, server: KeystileServer, workdir: Path) -> Iterator[Page]:
    """A page of a new administrator's own browser context, made as an operator makes the first admin."""
    email = new_email("admin")
    create_admin(server.env_for_cli, email, workdir)  # type: ignore[attr-defined]
    context = browser.new_context(base_url=server.url)
    try:
        admin = context.new_page()
        sign_in(admin, email)
        yield admin
    finally:
        context.close()


def create_key(page: Page, name: str = "browser key") -> str:
    page.get_by_role("link", name="Keys", exact=True).click()
    page.get_by_role("link", name="Create key").click()
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Create key").click()
    field = page.get_by_label("New API key")
    expect(field).to_have_attribute("readonly", "")
    return field.input_value()


def export_status(server: KeystileServer, raw: str) -> int:
    return httpx.get(f"{server.url}{EXPORT}", headers={"X-API-Key": raw}, timeout=10).status_code


def test_a_wrong_password_shows_invalid_email_or_password(page: Page, server: KeystileServer) -> None:
    email = new_email("wrong")
    register(server.url, email)
    sign_in(page, email, "not the password")
    expect(page.get_by_role("alert")).to_have_text("Invalid email or password")
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)


def test_create_copy_and_use_a_key_then_the_reveal_never_shows_again(
    context: BrowserContext, page: Page, server: KeystileServer
) -> None:
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    signed_in(page, server)
    raw = create_key(page)
    expect(page.get_by_text("it will not be shown again")).to_be_visible()
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("status")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == raw
    assert export_status(server, raw) == 200

    page.reload()
    assert raw not in settled_content(page)
    page.goto("/ui/keys")
    expect(page.get_by_role("cell", name="browser key")).to_have_count(1)  # the reload created nothing
    with contextlib.suppress(PlaywrightError):  # Chromium may refuse to re-post a no-store page: nothing shown
        page.go_back()
    assert raw not in settled_content(page)
    assert all(raw not in cookie["value"] for cookie in context.cookies())
    assert raw not in server.log  # access lines name paths only, and no path holds the key


def settled_content(page: Page) -> str:
    """The page's HTML once navigation stops (a page restored from the back/forward cache sends itself on)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            page.wait_for_load_state()
            return page.content()
        except PlaywrightError:
            if time.monotonic() > deadline:
                raise


def test_rotate_reveals_a_new_key_and_the_old_one_works_through_the_grace(page: Page, server: KeystileServer) -> None:
    signed_in(page, server)
    old = create_key(page)
    page.get_by_role("link", name="Go to browser key").click()
    page.get_by_label("Grace period").select_option("1 hour")
    page.get_by_role("button", name="Rotate").click()
    new = page.get_by_label("New API key").input_value()
    assert new != old
    assert (export_status(server, old), export_status(server, new)) == (200, 200)


def test_disable_enable_and_revoke_with_confirmation(page: Page, server: KeystileServer) -> None:
    signed_in(page, server)
    raw = create_key(page)
    page.get_by_role("link", name="Go to browser key").click()
    page.get_by_role("button", name="Disable").click()
    expect(page.get_by_role("button", name="Enable")).to_be_visible()
    assert export_status(server, raw) == 401
    page.get_by_role("button", name="Enable").click()
    expect(page.get_by_role("button", name="Disable")).to_be_visible()
    assert export_status(server, raw) == 200

    page.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("button", name="Confirm revoke")).to_be_visible()
    assert export_status(server, raw) == 200  # nothing revoked before the confirmation
    page.get_by_role("button", name="Confirm revoke").click()
    expect(page.locator(".state")).to_have_text("Revoked")
    assert export_status(server, raw) == 401


def test_another_users_key_is_404_and_the_admin_page_is_403_for_others(
    browser: Browser, page: Page, server: KeystileServer, tmp_path: Path
) -> None:
    signed_in(page, server, "owner")
    create_key(page, "owners key")
    page.get_by_role("link", name="Go to owners key").click()
    key_url = page.url

    other = browser.new_context(base_url=server.url)
    try:
        intruder = other.new_page()
        signed_in(intruder, server, "intruder")
        response = intruder.goto(key_url)
        assert response is not None
        assert response.status == 404
        admin_page = intruder.goto("/ui/admin/keys")
        assert admin_page is not None
        assert admin_page.status == 403
        expect(intruder.get_by_role("alert")).to_have_text("Only administrators may see this page.")
    finally:
        other.close()

    with signed_in_admin(browser, server, tmp_path) as admin:
        admin.get_by_role("link", name="All keys").click()
        expect(admin.get_by_role("cell", name="owners key", exact=True)).to_be_visible()


def test_an_admin_revokes_another_users_key_only_after_confirming(
    browser: Browser, page: Page, server: KeystileServer, tmp_path: Path
) -> None:
    owner = signed_in(page, server, "owner")
    raw = create_key(page, "key to pull")
    with signed_in_admin(browser, server, tmp_path) as admin:
        admin.get_by_role("link", name="Users").click()
        expect(admin.get_by_role("cell", name=owner)).to_be_visible()
        admin.get_by_role("link", name="All keys").click()
        admin.get_by_role("button", name="Revoke key to pull").click()
        expect(admin.get_by_role("heading", name="Revoke key to pull?")).to_be_visible()
        assert export_status(server, raw) == 200  # nothing revoked before the confirmation
        admin.get_by_role("button", name="Confirm revoke").click()
        expect(admin.get_by_role("heading", name="All keys")).to_be_visible()
        expect(admin.get_by_role("button", name="Revoke key to pull")).to_have_count(0)
        assert export_status(server, raw) == 401


def test_a_post_without_or_with_a_wrong_csrf_token_is_403_and_changes_nothing(
    page: Page, server: KeystileServer
) -> None:
    signed_in(page, server)
    raw = create_key(page)
    page.get_by_role("link", name="Go to browser key").click()
    revoke_url = page.url + "/revoke"
    for form in ({"confirm": "yes"}, {"confirm": "yes", "csrf_token": "0" * 64}):
        response = page.request.post(revoke_url, form=form)  # the session cookie goes along
        assert response.status == 403
    assert export_status(server, raw) == 200


def test_sign_out_ends_the_session_so_the_old_cookie_no_longer_works(
    browser: Browser, context: BrowserContext, page: Page, server: KeystileServer
) -> None:
    signed_in(page, server)
    cookies = context.cookies()
    assert any(cookie["name"] == "keystile_session" and cookie["httpOnly"] for cookie in cookies)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()

    replay = browser.new_context(base_url=server.url)
    try:
        replay.add_cookies(cookies)
        stale = replay.new_page()
        stale.goto("/ui/keys")
        assert stale.url.endswith("/ui/login")
    finally:
        replay.close()


def test_read_views_work_without_javascript(browser: Browser, server: KeystileServer) -> None:
    no_script = browser.new_context(base_url=server.url, java_script_enabled=False)
    try:
        page = no_script.new_page()
        signed_in(page, server, "noscript")
        raw = create_key(page, "no script key")
        assert raw.startswith("ks_")
        page.get_by_role("link", name="Go to no script key").click()
        expect(page.get_by_role("img", name="Last 24 hours, by hour: 0 admitted, 0 refused")).to_be_visible()
        for link, heading in (
            ("Keys", "Keys"),
            ("Identities", "Identities"),
            ("Webhooks", "Webhooks"),
            ("Audit", "Audit"),
        ):
            page.get_by_role("link", name=link, exact=True).click()
            expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        expect(page.get_by_role("cell", name="key.created").first).to_be_visible()
    finally:
        no_script.close()


def test_the_create_form_can_be_used_with_the_keyboard_alone(page: Page, server: KeystileServer) -> None:
    signed_in(page, server)
    page.goto("/ui/keys/new")
    expect(page.get_by_label("Name")).to_be_focused()  # autofocus
    page.keyboard.type("keyboard key")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Scopes")).to_be_focused()
    page.keyboard.type("read:data")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Expires")).to_be_focused()
    page.keyboard.type("30")  # type-ahead selects "30 days"
    expect(page.get_by_label("Expires")).to_have_value("30 days")
    for field in ("Rate limit", "Window (seconds)", "Quota"):
        page.keyboard.press("Tab")
        expect(page.get_by_label(field)).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Create key")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_label("New API key")).to_be_visible()
    page.get_by_role("link", name="Go to keyboard key").click()
    expect(page.get_by_text("read:data")).to_be_visible()
    expect(page.get_by_text("Never")).to_have_count(0)  # it expires
