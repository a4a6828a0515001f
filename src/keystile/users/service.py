"""Accounts: registration, the sign-in sequence (`POST /auth/token` and the dashboard's form), listings for admins."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.audit import service as audit
from keystile.keys.models import ApiKey
from keystile.net import IPAddress
from keystile.users.models import User
from keystile.users.passwords import Passwords

if TYPE_CHECKING:
    from keystile.instance import Keystile


class EmailTakenError(Exception):
    pass


class SignInLockedError(Exception):
    """Too many failed sign-ins for this email or from this address: try again in `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"locked for {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class UserSummary:
    """A row of the administrators' users page."""

    id: int
    email: str
    is_admin: bool
    created_at: datetime
    key_count: int


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


async def sign_in(
    keystile: Keystile, session: AsyncSession, *, email: str, password: str, ip: IPAddress | None
) -> User | None:
    """The one sign-in sequence: the account, or None for bad credentials. Raises SignInLockedError.

    A locked email or address is refused before the password is checked (README, "Rate limits"); a failure counts
    against both throttles and is audited as `user.login_failed` (naming the account when the email exists), committed.
    """
    from keystile.users import throttle  # here, not at the top: throttle imports normalize_email from this module

    wait = await throttle.seconds_locked(keystile, email, ip)
    if wait is not None:
        keystile.metrics.rate_limited.labels("login_failures").inc()
        raise SignInLockedError(wait)
    user, ok = await authenticate(session, email=email, password=password, passwords=keystile.passwords)
    if user is not None and ok:
        return user
    await throttle.record_failure(keystile, email, ip)
    audit.record(
        session,
        at=keystile.clock(),
        action="user.login_failed",
        actor_id=user.id if user else None,
        ip=str(ip) if ip is not None else None,
    )
    await session.commit()
    return None


async def list_with_key_counts(session: AsyncSession, *, limit: int, offset: int) -> list[UserSummary]:
    """Every user, oldest first, with how many keys each holds (revoked ones included)."""
    key_count = func.count(ApiKey.id)
    query = (
        select(User.id, User.email, User.is_admin, User.created_at, key_count)
        .outerjoin(ApiKey, ApiKey.user_id == User.id)
        .group_by(User.id)
        .order_by(User.id)
        .limit(limit)
        .offset(offset)
    )
    return [UserSummary(*row) for row in await session.execute(query)]
