from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from keystile.deps import ClientIP, CurrentUser, KeystileDep, SessionDep, ip_text
from keystile.responses import BEARER_ANSWERS, DATABASE_UNAVAILABLE, DETAIL_BODY, challenge
from keystile.users import service
from keystile.users.schemas import Token, UserCreate, UserRead
from keystile.users.tokens import issue_access_token

router = APIRouter(tags=["users"])


_BAD_CREDENTIALS = HTTPException(
    status.HTTP_401_UNAUTHORIZED,
    detail="Incorrect email or password",
    headers={"WWW-Authenticate": "Bearer"},
)


@router.post(
    "/auth/register",
    status_code=status.HTTP_201_CREATED,
    response_model=UserRead,
    responses={
        403: {"description": "Registration is closed", "content": DETAIL_BODY},
        409: {"description": "Email already registered", "content": DETAIL_BODY},
        **DATABASE_UNAVAILABLE,
    },
)
async def register(body: UserCreate, keystile: KeystileDep, session: SessionDep, ip: ClientIP) -> UserRead:
    if not keystile.settings.allow_registration:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="Registration is closed")
    try:
        user = await service.create_user(
            session,
            email=body.email,
            password=body.password,
            passwords=keystile.passwords,
            now=keystile.clock(),
            ip=ip_text(ip),
        )
    except service.EmailTakenError:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="Email already registered") from None
    await session.commit()
    return UserRead.model_validate(user)


@router.post(
    "/auth/token",
    response_model=Token,
    responses={
        401: {"description": "Bad credentials", "content": DETAIL_BODY, "headers": challenge("`Bearer`")},
        429: {
            "description": "Too many failed attempts for this email or from this address",
            "content": DETAIL_BODY,
            "headers": {
                "Retry-After": {"description": "Seconds to wait", "required": True, "schema": {"type": "integer"}}
            },
        },
        503: {
            "description": "The database is unavailable, or rate limiting (RATE_LIMIT_FAILURE=closed)",
            "content": DETAIL_BODY,
        },
    },
)
async def login(
    response: Response,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    keystile: KeystileDep,
    session: SessionDep,
    ip: ClientIP,
) -> Token:
    try:
        user = await service.sign_in(keystile, session, email=form.username, password=form.password, ip=ip)
    except service.SignInLockedError as locked:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail="Too many failed login attempts",
            headers={"Retry-After": str(locked.retry_after)},
        ) from None
    if user is None:
        raise _BAD_CREDENTIALS
    ttl = keystile.settings.jwt_ttl_seconds
    token = issue_access_token(user_id=user.id, signing_key=keystile.signing_key, now=keystile.clock(), ttl_seconds=ttl)
    # A token response must not be stored by any cache on the way (RFC 6749 section 5.1).
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return Token(access_token=token, expires_in=ttl)


@router.get(
    "/users/me",
    response_model=UserRead,
    responses=BEARER_ANSWERS,
)
async def me(user: CurrentUser) -> UserRead:
    return UserRead.model_validate(user)
