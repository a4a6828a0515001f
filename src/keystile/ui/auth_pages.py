"""Sign in and sign out. Sign-in takes the same throttle and audit path as `POST /auth/token`."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from keystile.audit import service as audit
from keystile.deps import ClientIP, KeystileDep, SessionDep, ip_text
from keystile.ui import csrf, sessions
from keystile.ui.pages import FormVisitor, render, see_other, text
from keystile.users import service as users_service
from keystile.users import throttle

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
    _set_cookie(request, response, csrf.LOGIN_COOKIE, nonce, max_age=3600)
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
    wait = await throttle.seconds_locked(keystile, email, ip)
    if wait is not None:
        keystile.metrics.rate_limited.labels("login_failures").inc()
        page = _login_page(request, keystile, status_code=429, error="Too many failed sign-in attempts: try later.")
        page.headers["Retry-After"] = str(wait)
        return page
    # Checked against the account's hash even when malformed, so a refusal takes as long either way.
    plausible = password if isinstance(password, str) and 0 < len(password) <= MAX_PASSWORD_LENGTH else ""
    user, ok = await users_service.authenticate(session, email=email, password=plausible, passwords=keystile.passwords)
    if user is None or not ok or not plausible:
        await throttle.record_failure(keystile, email, ip)
        audit.record(
            session,
            at=keystile.clock(),
            action="user.login_failed",
            actor_id=user.id if user else None,
            ip=ip_text(ip),
        )
        await session.commit()
        return _login_page(request, keystile, status_code=401, error=BAD_CREDENTIALS, email=email)
    started = await sessions.start(session, user_id=user.id, now=keystile.clock())
    response = see_other("/ui/keys")
    _set_cookie(request, response, sessions.COOKIE, started.token, max_age=int(sessions.LIFETIME.total_seconds()))
    response.delete_cookie(csrf.LOGIN_COOKIE, path="/ui")
    return response


@router.post("/logout")
async def logout(visitor: FormVisitor, session: SessionDep) -> RedirectResponse:
    await sessions.end(session, visitor.cookie)
    response = see_other("/ui/login")
    response.delete_cookie(sessions.COOKIE, path="/ui")
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, *, max_age: int) -> None:
    """HttpOnly (no script reads it), SameSite=Lax (not sent on another site's POST), Secure under https, and
    scoped to the dashboard's paths."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
