from __future__ import annotations

import unicodedata
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.audit import service as audit
from keystile.users.models import User
from keystile.users.passwords import Passwords


class EmailTakenError(Exception):
    pass


def normalize_email(email: str) -> str:
    """One spelling per address: NFKC first, so full-width or other compatibility look-alikes ("ａｌｉｃｅ@…") are the
    same account as the plain address, then lower case."""
    return unicodedata.normalize("NFKC", email).strip().lower()


async def get_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == normalize_email(email)))


async def create_user(
    session: AsyncSession,
    *,
    email: str,
    password: str,
    passwords: Passwords,
    is_admin: bool = False,
    now: datetime,
    ip: str | None = None,
) -> User:
    """Insert the user and its `user.registered` event, flushed; the caller commits. Raises EmailTakenError."""
    user = User(
        email=normalize_email(email),
        password_hash=await passwords.hash(password),
        is_admin=is_admin,
        created_at=now,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as error:
        # The unique constraint, not a prior SELECT, decides: two concurrent registrations get one 201, one 409.
        await session.rollback()
        raise EmailTakenError(email) from error
    audit.record(session, at=now, action="user.registered", actor_id=user.id, ip=ip)
    return user


async def authenticate(
    session: AsyncSession, *, email: str, password: str, passwords: Passwords
) -> tuple[User | None, bool]:
    """Return (the account named by `email` or None, whether the password is right).

    An unknown email still costs one Argon2 check, so response time does not reveal which emails exist.
    """
    user = await get_by_email(session, email)
    ok = await passwords.verify(password, user.password_hash if user else None)
    return user, ok
