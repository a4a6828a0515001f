"""What every dashboard page shares: the templates, the signed-in visitor, the CSRF check of forms, rendering.

Routes ask for `visitor: Visitor` (a GET: signed in, else sent to /ui/login) or `visitor: FormVisitor` (a POST: signed
in and carrying this session's CSRF token, else 403 and nothing changes); `AdminVisitor` and `AdminFormVisitor` add
"and an administrator" (else a 403 page).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from keystile.deps import KeystileDep, SessionDep
from keystile.ui import csrf, sessions
from keystile.users.models import User

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
SESSION_PURPOSE = "session"


@dataclass(frozen=True, slots=True)
class Account:
    """What pages need of the signed-in user, copied out of the ORM row: a rollback later in the request (a
    conflict) expires rows, and a template must never load from the database."""

    id: int
    email: str
    is_admin: bool

    @classmethod
    def of(cls, user: User) -> Account:
        return cls(user.id, user.email, user.is_admin)


@dataclass(frozen=True)
class SignedIn:
    """A signed-in person: their account, their session's id, and the CSRF token their forms carry."""

    user: Account
    session_id: int
    csrf_token: str = field(repr=False)
    cookie: str = field(repr=False)


class SignInRequired(Exception):
    """No live session: the visitor is sent to the sign-in page."""


class PageError(Exception):
    """A refusal shown as a page (403, 404, 409, 422) instead of FastAPI's JSON."""

    def __init__(self, status_code: int, title: str, message: str, visitor: SignedIn | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.title = title
        self.message = message
        self.visitor = visitor


async def _visitor(request: Request, keystile: KeystileDep, session: SessionDep) -> SignedIn:
    cookie = request.cookies.get(sessions.COOKIE, "")
    found = await sessions.find(session, cookie, now=keystile.clock())
    if found is None:
        raise SignInRequired
    row, user = found
    return SignedIn(Account.of(user), row.id, csrf.token_for(keystile.signing_key, cookie, SESSION_PURPOSE), cookie)


async def _form_visitor(
    request: Request, keystile: KeystileDep, visitor: Annotated[SignedIn, Depends(_visitor)]
) -> SignedIn:
    form = await request.form()
    if not csrf.is_valid(keystile.signing_key, visitor.cookie, SESSION_PURPOSE, form.get(csrf.FIELD)):
        raise PageError(403, "Forbidden", "This form has expired or did not come from this site. Nothing changed.")
    return visitor


def _only_admins(visitor: SignedIn) -> SignedIn:
    if not visitor.user.is_admin:
        raise PageError(403, "Forbidden", "Only administrators may see this page.", visitor)
    return visitor


async def _admin(visitor: Annotated[SignedIn, Depends(_visitor)]) -> SignedIn:
    return _only_admins(visitor)


async def _admin_form(visitor: Annotated[SignedIn, Depends(_form_visitor)]) -> SignedIn:
    return _only_admins(visitor)


Visitor = Annotated[SignedIn, Depends(_visitor)]
FormVisitor = Annotated[SignedIn, Depends(_form_visitor)]
AdminVisitor = Annotated[SignedIn, Depends(_admin)]
AdminFormVisitor = Annotated[SignedIn, Depends(_admin_form)]

MAX_PAGE = 1_000_000

Row = TypeVar("Row")


def text(form: FormData, name: str, *, limit: int = 4096) -> str:
    """A text field of a form, stripped; "" when absent or a file. Longer than `limit`: cut, and refused later by
    the model's own length check."""
    value = form.get(name)
    return value.strip()[: limit + 1] if isinstance(value, str) else ""


def page_number(page: str | None, visitor: SignedIn) -> int:
    """The `?page=` of a paged table, from 1; 422 page unless a whole number from 1 to MAX_PAGE."""
    if page is None or page == "":
        return 1
    if not page.isdigit() or not 1 <= int(page[:8]) <= MAX_PAGE:
        raise PageError(422, "Invalid page", f"Page must be a whole number from 1 to {MAX_PAGE}.", visitor)
    return int(page)


async def one_page(
    fetch: Callable[[int, int], Awaitable[Sequence[Row]]], number: int, size: int
) -> tuple[Sequence[Row], bool]:
    """Page `number` (from 1) of `size` rows from `fetch(limit, offset)`, and whether another page follows: one row
    more than shown is fetched to know."""
    rows = await fetch(size + 1, (number - 1) * size)
    return rows[:size], len(rows) > size


def confirmed(form: FormData) -> bool:
    """Whether a destructive form came from its confirmation page ("Confirm revoke", "Confirm delete")."""
    return form.get("confirm") == "yes"


def render(
    request: Request,
    template: str,
    visitor: SignedIn | None,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, template, {"visitor": visitor, **context}, status_code=status_code)


def confirmation(
    request: Request, visitor: SignedIn, *, title: str, message: str, action: str, button: str, cancel_url: str
) -> HTMLResponse:
    """The page a destructive action asks first: nothing changes until its button posts `confirm=yes` to `action`."""
    return render(
        request,
        "confirm.html",
        visitor,
        title=title,
        message=message,
        action=action,
        confirm_text=button,
        cancel_url=cancel_url,
    )


def see_other(url: str) -> RedirectResponse:
    """After a change: the browser loads `url` with GET, so a reload repeats nothing."""
    return RedirectResponse(url, status_code=303)


async def page_error(request: Request, exc: Exception) -> HTMLResponse:
    assert isinstance(exc, PageError)
    return render(request, "error.html", exc.visitor, status_code=exc.status_code, title=exc.title, message=exc.message)


async def sign_in_required(request: Request, exc: Exception) -> RedirectResponse:
    return see_other("/ui/login")
