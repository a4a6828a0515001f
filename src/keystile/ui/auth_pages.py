"""Sign in and sign out. Sign-in is `users.service.sign_in`, the sequence `POST /auth/token` takes."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from keystile.deps import ClientIP, KeystileDep, SessionDep
from keystile.instance import Keystile
from keystile.net import in_networks, parse_address
from keystile.ui import csrf, sessions
from keystile.ui.pages import FormVisitor, render, see_other, text
from keystile.users import service as users_service

router = APIRouter()

LOGIN_PURPOSE = "login"
BAD_CREDENTIALS = "Invalid email or password"
MAX_PASSWORD_LENGTH = 1024


@router.get("/")
async def home(request: Request, keystile: KeystileDep, session: SessionDep) -> RedirectResponse:
    cookie = request.cookies.get(sessions.COOKIE, "")
    signed_in = await sessions.find(session, cookie, now=keystile.clock()) is not None
    return see_other("/ui/keys" if signed_in else "/ui/login")


def _login_page(request: Request, keystile: KeystileDep, *, status_code: int = 200, **context: str) -> HTMLResponse:
    """The form, with a fresh pre-session cookie its CSRF token is bound to."""
    nonce = secrets.token_urlsafe(24)
    token = csrf.token_for(keystile.signing_key, nonce, LOGIN_PURPOSE)
    response = render(request, "login.html", None, status_code=status_code, csrf_token=token, **context)
    _set_cookie(request, keystile, response, csrf.LOGIN_COOKIE, nonce, max_age=3600)
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, keystile: KeystileDep) -> HTMLResponse:
    return _login_page(request, keystile)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, keystile: KeystileDep, session: SessionDep, ip: ClientIP) -> Response:
    form = await request.form()
    email, password = text(form, "email", limit=320), form.get("password")
    if not csrf.is_valid(
        keystile.signing_key, request.cookies.get(csrf.LOGIN_COOKIE), LOGIN_PURPOSE, form.get(csrf.FIELD)
    ):
        return _login_page(request, keystile, status_code=403, error="The form expired: please sign in again.")
    # A malformed password is checked as "" (never right), so a refusal takes as long either way.
    plausible = password if isinstance(password, str) and len(password) <= MAX_PASSWORD_LENGTH else ""
    try:
        user = await users_service.sign_in(keystile, session, email=email, password=plausible, ip=ip)
    except users_service.SignInLockedError as locked:
        page = _login_page(request, keystile, status_code=429, error="Too many failed sign-in attempts: try later.")
        page.headers["Retry-After"] = str(locked.retry_after)
        return page
    if user is None:
        return _login_page(request, keystile, status_code=401, error=BAD_CREDENTIALS, email=email)
    started = await sessions.start(session, user_id=user.id, now=keystile.clock())
    response = see_other("/ui/keys")
    lifetime = int(sessions.LIFETIME.total_seconds())
    _set_cookie(request, keystile, response, sessions.COOKIE, started.token, max_age=lifetime)
    response.delete_cookie(csrf.LOGIN_COOKIE, path="/ui")
    return response


@router.post("/logout")
async def logout(visitor: FormVisitor, session: SessionDep) -> RedirectResponse:
    await sessions.end(session, visitor.cookie)
    response = see_other("/ui/login")
    response.delete_cookie(sessions.COOKIE, path="/ui")
    return response


def over_https(request: Request, keystile: Keystile) -> bool:
    """Whether the browser reached us over https: the request's own scheme, or the left-most `X-Forwarded-Proto` (the
    proxy that met the browser) when the socket peer is in KEYSTILE_TRUSTED_PROXIES, a TLS-terminating proxy.
    uvicorn's own proxy-header handling stays off (DESIGN.md, "Client address"): one list of proxies is believed."""
    if request.url.scheme == "https":
        return True
    peer = parse_address(request.client.host if request.client else None)
    if peer is None or not in_networks(peer, keystile.trusted_proxies):
        return False
    return request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower() == "https"


def _set_cookie(
    request: Request, keystile: Keystile, response: Response, name: str, value: str, *, max_age: int
) -> None:
    """HttpOnly (no script reads it), SameSite=Lax (not sent on another site's POST), Secure under https, and
    scoped to the dashboard's paths."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        samesite="lax",
        secure=over_https(request, keystile),
    )
