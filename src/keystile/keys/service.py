"""Key issuance and lifecycle. Functions add to the caller's session; only the caller commits."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.audit import service as audit
from keystile.keys import format as key_format
from keystile.keys.models import ApiKey
from keystile.keys.schemas import KeyCreate

# A key_id collision needs two draws of 71 bits to meet; retrying covers the astronomically unlucky case.
_KEY_ID_ATTEMPTS = 3


class KeyNotFoundError(Exception):
    pass


class InvalidKeySettingsError(ValueError):
    """A request that validates on its own but not against the current time (e.g. expires_at in the past)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


@dataclass(frozen=True)
class IssuedKey:
    row: ApiKey
    raw: str = field(repr=False)


async def create_key(
    session: AsyncSession,
    *,
    owner_id: int,
    spec: KeyCreate,
    prefix: str,
    pepper: bytes,
    now: datetime,
    ip: str | None = None,
    rotated_from: int | None = None,
) -> IssuedKey:
    expires_at = _expiry(spec, now)
    for attempt in range(_KEY_ID_ATTEMPTS):
        new_key = key_format.generate_key(prefix)
        row = ApiKey(
            key_id=new_key.key_id,
            key_hash=key_format.hash_key(new_key.raw, pepper),
            hash_scheme=key_format.HASH_SCHEME,
            hint=new_key.hint,
            name=spec.name,
            user_id=owner_id,
            is_active=True,
            created_at=now,
            use_count=0,
            expires_at=expires_at,
            scopes=spec.scopes,
            ip_allowlist=spec.ip_allowlist,
            key_metadata=spec.metadata,
            rate_limit=spec.rate_limit.limit if spec.rate_limit else None,
            rate_limit_window_seconds=spec.rate_limit.window_seconds if spec.rate_limit else None,
            quota_remaining=spec.quota,
            rotated_from=rotated_from,
        )
        try:
            async with session.begin_nested():
                session.add(row)
        except IntegrityError:
            if attempt == _KEY_ID_ATTEMPTS - 1:
                raise
            continue
        break
    audit.record(session, at=now, action="key.created", actor_id=owner_id, api_key_id=row.id, ip=ip)
    return IssuedKey(row=row, raw=new_key.raw)


def _expiry(spec: KeyCreate, now: datetime) -> datetime | None:
    if spec.expires_in is not None:
        return now + timedelta(seconds=spec.expires_in)
    if spec.expires_at is not None and spec.expires_at <= now:
        raise InvalidKeySettingsError("expires_at", "expires_at must lie in the future")
    return spec.expires_at


async def list_keys(session: AsyncSession, *, owner_id: int | None, limit: int, offset: int) -> list[ApiKey]:
    """Keys newest first; all owners' keys when `owner_id` is None (admin listing)."""
    query = select(ApiKey).order_by(ApiKey.id.desc()).limit(limit).offset(offset)
    if owner_id is not None:
        query = query.where(ApiKey.user_id == owner_id)
    return list((await session.scalars(query)).all())


async def get_key(session: AsyncSession, *, key_pk: int, owner_id: int | None, for_update: bool = False) -> ApiKey:
    """The key with this id, if `owner_id` owns it (or is None for admins). Someone else's key is 'not found'."""
    query = select(ApiKey).where(ApiKey.id == key_pk)
    if owner_id is not None:
        query = query.where(ApiKey.user_id == owner_id)
    if for_update:
        query = query.with_for_update()
    row = await session.scalar(query)
    if row is None:
        raise KeyNotFoundError(key_pk)
    return row


async def revoke_key(session: AsyncSession, row: ApiKey, *, actor_id: int, now: datetime, ip: str | None) -> bool:
    """Revoke `row`; return False (and record nothing) when it was already revoked. Idempotent by design."""
    if not row.is_active:
        return False
    row.is_active = False
    row.revoked_at = now
    audit.record(session, at=now, action="key.revoked", actor_id=actor_id, api_key_id=row.id, ip=ip)
    return True
