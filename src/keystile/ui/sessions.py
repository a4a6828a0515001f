"""Dashboard sessions: started at sign-in, found by the cookie's token, ended by sign-out or expiry.

The cookie holds 256 random bits; the table holds their SHA-256 (a fast hash is enough for a value with that much
entropy, as for API keys). Expired rows are deleted whenever someone signs in.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.ui.models import UiSession
from keystile.users.models import User

COOKIE = "keystile_session"
LIFETIME = timedelta(hours=12)


@dataclass(frozen=True)
class Started:
    row: UiSession
    token: str = field(repr=False)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def start(session: AsyncSession, *, user_id: int, now: datetime) -> Started:
    """A new session for `user_id` (a fresh token at every sign-in, so no token chosen before it is ever valid);
    committed."""
    await session.execute(delete(UiSession).where(UiSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    row = UiSession(token_hash=_hash(token), user_id=user_id, created_at=now, expires_at=now + LIFETIME)
    session.add(row)
    await session.commit()
    return Started(row=row, token=token)


async def find(session: AsyncSession, token: str, *, now: datetime) -> tuple[UiSession, User] | None:
    """The live session this token names and its user, or None (unknown, ended or expired)."""
    if not token or len(token) > 128:
        return None
    query = (
        select(UiSession, User)
        .join(User, User.id == UiSession.user_id)
        .where(UiSession.token_hash == _hash(token), UiSession.expires_at > now)
    )
    found = (await session.execute(query)).first()
    return (found[0], found[1]) if found is not None else None


async def end(session: AsyncSession, token: str) -> None:
    await session.execute(delete(UiSession).where(UiSession.token_hash == _hash(token)))
    await session.commit()


async def spend_form(session: AsyncSession, session_id: int, form_id: str) -> bool:
    """Mark a one-time form as submitted; False when it already was (a reload, or a second submission racing the
    first: the conditional UPDATE lets exactly one of them through)."""
    if not form_id or len(form_id) > 64:
        return False
    result = await session.execute(
        update(UiSession)
        .where(UiSession.id == session_id)
        .where(or_(UiSession.spent_form_id.is_(None), UiSession.spent_form_id != form_id))
        .values(spent_form_id=form_id)
    )
    await session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]
