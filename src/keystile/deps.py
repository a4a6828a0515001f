"""Request dependencies as `Annotated` aliases: routes ask for `session: SessionDep, user: CurrentUser`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.db import MAX_ID
from keystile.fastapi import client_ip
from keystile.instance import Keystile, keystile_of
from keystile.keys.service import KeyManager
from keystile.net import IPAddress
from keystile.users.models import User
from keystile.users.tokens import user_id_from_token

bearer_token = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)
"""The bearer token of a request, or None (also the OpenAPI scheme `OAuth2PasswordBearer`)."""


async def _keystile(request: Request) -> Keystile:
    # async, though it awaits nothing: FastAPI runs a plain `def` dependency in a worker thread, on every request.
    return keystile_of(request)


KeystileDep = Annotated[Keystile, Depends(_keystile)]
ClientIP = Annotated[IPAddress | None, Depends(client_ip)]


async def _session(keystile: KeystileDep) -> AsyncIterator[AsyncSession]:
    async with keystile.session_factory() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(_session)]


async def _key_manager(keystile: KeystileDep, session: SessionDep) -> KeyManager:
    return keystile.key_manager(session)


KeysDep = Annotated[KeyManager, Depends(_key_manager)]

Limit = Annotated[int, Query(ge=1, le=100, description="page size")]
Offset = Annotated[int, Query(ge=0, le=2**31, description="rows to skip")]
KeyPk = Annotated[int, Path(ge=1, le=MAX_ID, description="The key's integer id")]
IdentityPk = Annotated[int, Path(ge=1, le=MAX_ID, description="The identity's integer id")]
UnusedForDays = Annotated[
    int | None, Query(ge=1, le=3650, description="only keys not used for this many days (never used: since creation)")
]


def _not_authenticated() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail="Not authenticated",
        headers={"WWW-Authenticate": "Bearer"},
    )


BearerToken = Annotated[str | None, Depends(bearer_token)]


async def user_from_token(keystile: Keystile, session: AsyncSession, token: str) -> User:
    """The user a bearer token names, else 401."""
    user_id = user_id_from_token(token, signing_key=keystile.signing_key, now=keystile.clock())
    user = await session.get(User, user_id) if user_id is not None else None
    if user is None:
        raise _not_authenticated()
    return user


async def _optional_user(keystile: KeystileDep, session: SessionDep, token: BearerToken) -> User | None:
    return await user_from_token(keystile, session, token) if token else None


async def _current_user(user: Annotated[User | None, Depends(_optional_user)]) -> User:
    if user is None:
        raise _not_authenticated()
    return user


async def _admin_user(user: Annotated[User, Depends(_current_user)]) -> User:
    if not user.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="Admin privileges required")
    return user


CurrentUser = Annotated[User, Depends(_current_user)]
AdminUser = Annotated[User, Depends(_admin_user)]


def ip_text(address: IPAddress | None) -> str | None:
    return str(address) if address is not None else None
