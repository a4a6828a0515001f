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
from keystile.keys.schemas import KeyCreate, KeyUpdate, RateLimitSpec

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
    # Other keys (key_id, id) whose state this issuance changed: caches must forget them too.
    also_changed: list[tuple[str, int]] = field(default_factory=list)


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
    expires_at: datetime | None = None,
    audit_action: str | None = "key.created",
) -> IssuedKey:
    """Issue a key; `expires_at` (already checked) overrides the spec's, for rotation, which copies the old expiry."""
    if expires_at is None:
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
    if audit_action is not None:
        audit.record(session, at=now, action=audit_action, actor_id=owner_id, api_key_id=row.id, ip=ip)
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


class KeyStateConflictError(Exception):
    """The key's state forbids the change (e.g. rotating a revoked or expired key)."""


async def _successor_id(session: AsyncSession, row: ApiKey) -> int | None:
    return await session.scalar(select(ApiKey.id).where(ApiKey.rotated_from == row.id))


async def update_key(
    session: AsyncSession, row: ApiKey, *, changes: KeyUpdate, actor_id: int, now: datetime, ip: str | None
) -> None:
    """Apply the fields present in `changes`; record one `key.updated` event naming them.

    A rotated key's expiry is the end of its grace and its quota is its successor's: changing either would let the
    old key outlive the rotation or split the shared balance, so both are a conflict.
    """
    fields = changes.model_fields_set
    if fields & {"expires_at", "expires_in", "quota"} and await _successor_id(session, row) is not None:
        raise KeyStateConflictError("this key was rotated: its expiry and quota follow the rotation")
    if "expires_in" in fields:
        assert changes.expires_in is not None
        row.expires_at = now + timedelta(seconds=changes.expires_in)
    if "expires_at" in fields:
        if changes.expires_at is not None and changes.expires_at <= now:
            raise InvalidKeySettingsError("expires_at", "expires_at must lie in the future")
        row.expires_at = changes.expires_at
    if changes.name is not None:
        row.name = changes.name
    if "scopes" in fields:
        row.scopes = list(changes.scopes or [])
    if "ip_allowlist" in fields:
        row.ip_allowlist = list(changes.ip_allowlist or [])
    if "metadata" in fields:
        row.key_metadata = dict(changes.metadata or {})
    if "rate_limit" in fields:
        row.rate_limit = changes.rate_limit.limit if changes.rate_limit else None
        row.rate_limit_window_seconds = changes.rate_limit.window_seconds if changes.rate_limit else None
    if "quota" in fields:
        row.quota_remaining = changes.quota
        row.quota_key_id = None
    audit.record(
        session,
        at=now,
        action="key.updated",
        actor_id=actor_id,
        api_key_id=row.id,
        ip=ip,
        detail={"fields": sorted(fields)},
    )


async def rotate_key(
    session: AsyncSession,
    row: ApiKey,
    *,
    grace_seconds: int,
    unspent_quota_lease: int = 0,
    prefix: str,
    pepper: bytes,
    actor_id: int,
    now: datetime,
    ip: str | None,
) -> IssuedKey:
    """Issue a successor with the same settings; the old key works until the grace ends, then is refused.

    A key is rotated at most once: a second rotation would fork its history into two live successors.
    """
    if not row.is_active:
        raise KeyStateConflictError("a revoked key cannot be rotated")
    if row.expires_at is not None and row.expires_at <= now:
        raise KeyStateConflictError("an expired key cannot be rotated")
    if await _successor_id(session, row) is not None:
        raise KeyStateConflictError("this key was already rotated")
    spec = KeyCreate(
        name=row.name,
        scopes=row.scopes,
        rate_limit=RateLimitSpec(limit=row.rate_limit, window_seconds=row.rate_limit_window_seconds)
        if row.rate_limit is not None and row.rate_limit_window_seconds is not None
        else None,
        quota=row.quota_remaining,
        ip_allowlist=row.ip_allowlist,
        metadata=row.key_metadata,
    )
    issued = await create_key(
        session,
        owner_id=row.user_id,
        spec=spec,
        prefix=prefix,
        pepper=pepper,
        now=now,
        rotated_from=row.id,
        expires_at=row.expires_at,
        audit_action=None,
    )
    if row.quota_remaining is not None:
        # One balance for both keys: it moves to the new key, and the old one spends from it until the grace ends.
        # Older keys of the chain still in their grace follow the balance too.
        issued.row.quota_remaining = row.quota_remaining + unspent_quota_lease
        row.quota_remaining = None
        row.quota_key_id = issued.row.id
        predecessors = (await session.scalars(select(ApiKey).where(ApiKey.quota_key_id == row.id))).all()
        for predecessor in predecessors:
            predecessor.quota_key_id = issued.row.id
            issued.also_changed.append((predecessor.key_id, predecessor.id))
    grace_end = now + timedelta(seconds=grace_seconds)
    row.expires_at = grace_end if row.expires_at is None else min(row.expires_at, grace_end)
    audit.record(
        session,
        at=now,
        action="key.rotated",
        actor_id=actor_id,
        api_key_id=row.id,
        ip=ip,
        detail={"new_api_key_id": issued.row.id, "grace_seconds": grace_seconds},
    )
    return issued
