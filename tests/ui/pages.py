"""Helpers for the dashboard's tests over HTTP: sign in through the form, read CSRF tokens out of pages."""

from __future__ import annotations

import re

import httpx

from tests.helpers import PASSWORD, register

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
FORM_ID = re.compile(r'name="form_id" value="([^"]+)"')
REVEALED = re.compile(r'id="revealed-secret"[^>]*value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "no CSRF token on the page"
    return match[1]


async def sign_in(client: httpx.AsyncClient, email: str = "alice@example.com", *, register_first: bool = True) -> str:
    """Register `email` (unless told not to) and sign in through the form; the session's CSRF token."""
    if register_first:
        await register(client, email)
    form = await client.get("/ui/login")
    response = await client.post(
        "/ui/login", data={"email": email, "password": PASSWORD, "csrf_token": csrf_of(form.text)}
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui/keys"
    keys = await client.get("/ui/keys")
    assert keys.status_code == 200
    return csrf_of(keys.text)


async def create_key_in_form(client: httpx.AsyncClient, csrf: str, **fields: str) -> httpx.Response:
    """Open the create form and submit it; the reveal page (or the refusal)."""
    form = await client.get("/ui/keys/new")
    match = FORM_ID.search(form.text)
    assert match
    data = {"name": "web key", "csrf_token": csrf, "form_id": match[1]} | fields
    return await client.post("/ui/keys/new", data=data)


def revealed(html: str) -> str:
    match = REVEALED.search(html)
    assert match, "no revealed secret on the page"
    return match[1]
