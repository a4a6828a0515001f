"""Request dependencies as `Annotated` aliases: routes ask for `session: SessionDep, user: CurrentUser`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.fastapi import client_ip
from keystile.net import IPAddress
from keystile.runtime import Keystile, runtime_of
from keystile.users.models import User
from keystile.users.tokens import user_id_from_token

_bearer = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)

RuntimeDep = Annotated[Keystile, Depends(runtime_of)]
ClientIP = Annotated[IPAddress | None, Depends(client_ip)]


async def _session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with runtime.session_factory() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(_session)]


def _not_authenticated() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail="Not authenticated",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def _optional_user(
    runtime: RuntimeDep, session: SessionDep, token: Annotated[str | None, Depends(_bearer)]
) -> User | None:
    if not token:
        return None
    user_id = user_id_from_token(token, signing_key=runtime.signing_key, now=runtime.clock())
    user = await session.get(User, user_id) if user_id is not None else None
    if user is None:
        raise _not_authenticated()
    return user


async def _current_user(user: Annotated[User | None, Depends(_optional_user)]) -> User:
    if user is None:
        raise _not_authenticated()
    return user


async def _admin_user(user: Annotated[User, Depends(_current_user)]) -> User:
    if not user.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="Admin privileges required")
    return user


OptionalUser = Annotated[User | None, Depends(_optional_user)]
CurrentUser = Annotated[User, Depends(_current_user)]
AdminUser = Annotated[User, Depends(_admin_user)]


def ip_text(address: IPAddress | None) -> str | None:
    return str(address) if address is not None else None
