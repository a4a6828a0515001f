"""From the dashboard's form fields to the API's own request models, so a form is validated exactly as JSON is.

Each `*_from_form` returns the model, or raises `FormInvalid` with one readable message per field.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData

from keystile.identities.schemas import IdentityCreate, IdentityUpdate
from keystile.keys.schemas import KeyCreate
from keystile.ui import csrf
from keystile.ui.pages import text
from keystile.webhooks.schemas import WebhookCreate, WebhookUpdate

# The choices of the "Expires" select and the "Grace period" select: label, seconds (None: never).
EXPIRIES: dict[str, int | None] = {
    "Never": None,
    "1 day": 86_400,
    "30 days": 30 * 86_400,
    "90 days": 90 * 86_400,
    "1 year": 365 * 86_400,
}
GRACE_PERIODS: dict[str, int] = {"None": 0, "1 minute": 60, "15 minutes": 900, "1 hour": 3600, "24 hours": 86_400}

_SEPARATORS = re.compile(r"[\s,]+")
_MAX_INT_DIGITS = 19


class FormInvalid(ValueError):
    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))
        self.errors = errors


def _integer(form: FormData, name: str, label: str, errors: dict[str, str]) -> int | None:
    value = text(form, name, limit=_MAX_INT_DIGITS)
    if not value:
        return None
    if not value.isdigit() or len(value) > _MAX_INT_DIGITS:
        errors[name] = f"{label} must be a whole number"
        return None
    return int(value)


def _rate_limit(form: FormData, errors: dict[str, str]) -> dict[str, int] | None:
    limit = _integer(form, "rate_limit", "Rate limit", errors)
    window = _integer(form, "window_seconds", "Window (seconds)", errors)
    if limit is None and window is None:
        return None
    if limit is None or window is None:
        errors.setdefault("rate_limit", "give both a rate limit and its window, or neither")
        return None
    return {"limit": limit, "window_seconds": window}


def _validated(model: type[BaseModel], data: dict[str, Any], errors: dict[str, str]) -> Any:
    if errors:
        raise FormInvalid(errors)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        for problem in error.errors(include_input=False, include_url=False):
            name = str(problem["loc"][0]) if problem["loc"] else "form"
            errors.setdefault(name, problem["msg"])
        raise FormInvalid(errors) from None


def typed_values(form: FormData) -> dict[str, str]:
    """What the visitor typed (text fields, the CSRF token left out), to fill a refused form again."""
    return {name: value for name, value in form.items() if isinstance(value, str) and name != csrf.FIELD}


def scopes_of(value: str) -> list[str]:
    return [scope for scope in _SEPARATORS.split(value) if scope]


def key_from_form(form: FormData) -> KeyCreate:
    errors: dict[str, str] = {}
    data: dict[str, Any] = {"name": text(form, "name", limit=100), "scopes": scopes_of(text(form, "scopes"))}
    expires = text(form, "expires") or "Never"
    if expires not in EXPIRIES:
        errors["expires"] = "choose one of the listed expiries"
    elif EXPIRIES[expires] is not None:
        data["expires_in"] = EXPIRIES[expires]
    data["rate_limit"] = _rate_limit(form, errors)
    data["quota"] = _integer(form, "quota", "Quota", errors)
    identity = _integer(form, "identity_id", "Identity", errors)
    if identity is not None:
        data["identity_id"] = identity
    validated: KeyCreate = _validated(KeyCreate, data, errors)
    return validated


def grace_seconds_of(form: FormData) -> int:
    choice = text(form, "grace") or "None"
    if choice not in GRACE_PERIODS:
        raise FormInvalid({"grace": "choose one of the listed grace periods"})
    return GRACE_PERIODS[choice]


def _identity_fields(form: FormData, errors: dict[str, str]) -> dict[str, Any]:
    return {
        "external_id": text(form, "external_id", limit=255),
        "rate_limit": _rate_limit(form, errors),
        "quota": _integer(form, "quota", "Quota", errors),
    }


def identity_from_form(form: FormData) -> IdentityCreate:
    errors: dict[str, str] = {}
    validated: IdentityCreate = _validated(IdentityCreate, _identity_fields(form, errors), errors)
    return validated


def identity_changes_from_form(form: FormData) -> IdentityUpdate:
    errors: dict[str, str] = {}
    validated: IdentityUpdate = _validated(IdentityUpdate, _identity_fields(form, errors), errors)
    return validated


def _webhook_fields(form: FormData) -> dict[str, Any]:
    """URL, events and description; a blank description is none (on an edit: cleared)."""
    events = [value for value in form.getlist("events") if isinstance(value, str)]
    return {"url": text(form, "url", limit=2048), "events": events, "description": text(form, "description") or None}


def webhook_from_form(form: FormData) -> WebhookCreate:
    validated: WebhookCreate = _validated(WebhookCreate, _webhook_fields(form), {})
    return validated


def webhook_changes_from_form(form: FormData) -> WebhookUpdate:
    validated: WebhookUpdate = _validated(WebhookUpdate, _webhook_fields(form), {})
    return validated
