"""Key issuance, reads and lifecycle: the one path every change to a key takes.

`KeyManager` is what the JSON API and the CLI call. Each change method applies the change and its audit event in the
session, commits, and only then tells every instance that the key changed (its cached record and quota lease are
dropped here at once and, through Redis, everywhere else). A caller cannot commit a change and forget the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from typing import Literal, get_args

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.audit import service as audit
from keystile.clock import Clock
from keystile.events import outbox as events
from keystile.identities.models import Identity
from keystile.identities.service import IdentityNotFoundError
from keystile.keys import format as key_format
from keystile.keys.invalidation import Invalidator
from keystile.keys.models import ApiKey
from keystile.keys.quota import QuotaLedger
from keystile.keys.schemas import MAX_EXPIRES_IN_SECONDS, KeyCreate, KeyRead, KeyUpdate
from keystile.refill import current_balance
from keystile.usage.recorder import UsageRecorder

# A key_id collision needs two draws of 71 bits to meet; retrying covers the astronomically unlucky case.
_KEY_ID_ATTEMPTS = 3

# One word for where a key stands, the first that holds: Revoked (final), Expired, Disabled (a pause), Active.
KeyState = Literal["Active", "Disabled", "Expired", "Revoked"]
KEY_STATES: tuple[KeyState, ...] = get_args(KeyState)


def key_state(key: KeyRead, now: datetime) -> KeyState:
    if not key.is_active:
        return "Revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "Expired"
    if not key.enabled:
        return "Disabled"
    return "Active"


def _state_condition(state: KeyState, now: datetime) -> ColumnElement[bool]:
    """`key_state` as SQL: the keys whose state at `now` is `state`."""
    unexpired = or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)
    conditions: dict[KeyState, ColumnElement[bool]] = {
        "Revoked": ApiKey.is_active.is_(False),
        "Expired": and_(ApiKey.is_active.is_(True), ApiKey.expires_at <= now),
        "Disabled": and_(ApiKey.is_active.is_(True), unexpired, ApiKey.enabled.is_(False)),
        "Active": and_(ApiKey.is_active.is_(True), unexpired, ApiKey.enabled.is_(True)),
    }
    return conditions[state]


class KeyNotFoundError(Exception):
    pass


class InvalidKeySettingsError(ValueError):
    """A request that validates on its own but not against the current time (e.g. expires_at in the past)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


class KeyStateConflictError(Exception):
    """The key's state forbids the change (e.g. rotating a revoked or expired key)."""


@dataclass(frozen=True)
class IssuedKey:
    row: ApiKey
    raw: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeyManager:
    """Keys in one session: reads, and changes that commit and then reach every instance."""

    session: AsyncSession
    _: KW_ONLY
    prefix: str
    pepper: bytes = field(repr=False)
    clock: Clock
    quotas: QuotaLedger
    usage: UsageRecorder
    invalidator: Invalidator

    # Reads

    async def list_page(
        self,
        *,
        owner_id: int | None,
        limit: int,
        offset: int,
        unused_for_days: int | None = None,
        state: KeyState | None = None,
        identity_id: int | None = None,
    ) -> list[ApiKey]:
        """Keys newest first; all owners' keys when `owner_id` is None (admin listing).

        With `unused_for_days`, only keys not used for that long; a key never used counts from its creation. The uses
        this process still holds in memory are written first, so a key just used here is never listed as stale.
        With `state`, only keys in that state now (`key_state`); with `identity_id`, only that identity's keys.
        """
        query = select(ApiKey).order_by(ApiKey.id.desc()).limit(limit).offset(offset)
        if owner_id is not None:
            query = query.where(ApiKey.user_id == owner_id)
        if state is not None:
            query = query.where(_state_condition(state, self.clock()))
        if identity_id is not None:
            query = query.where(ApiKey.identity_id == identity_id)
        if unused_for_days is not None:
            await self.usage.flush()
            cutoff = self.clock() - timedelta(days=unused_for_days)
            query = query.where(func.coalesce(ApiKey.last_used_at, ApiKey.created_at) <= cutoff)
        return list((await self.session.scalars(query)).all())

    async def get(self, key_pk: int, *, owner_id: int | None, for_update: bool = False) -> ApiKey:
        """The key with this id, if `owner_id` owns it (None: any owner, for admins). Someone else's key is 'not
        found', never 'forbidden', so ids do not reveal what exists."""
        query = select(ApiKey).where(ApiKey.id == key_pk)
        if owner_id is not None:
            query = query.where(ApiKey.user_id == owner_id)
        if for_update:
            query = query.with_for_update()
        row = await self.session.scalar(query)
        if row is None:
            raise KeyNotFoundError(key_pk)
        return row

    async def read(self, rows: Sequence[ApiKey]) -> list[KeyRead]:
        """Keys as stored, plus what this process holds in memory: buffered uses and unspent quota leases.

        A key in its rotation grace spends its successor's quota, so its balance is read from that row (one query for
        the whole page).
        """
        holder_ids = {row.quota_holder_id for row in rows if row.quota_holder_id is not None}
        shared_balances: dict[int, int | None] = {}
        if holder_ids:
            result = await self.session.execute(
                select(ApiKey.id, ApiKey.quota_remaining).where(ApiKey.id.in_(holder_ids))
            )
            shared_balances = {holder_id: balance for holder_id, balance in result}
        return [self._read(row, shared_balances) for row in rows]

    async def read_one(self, row: ApiKey) -> KeyRead:
        return (await self.read([row]))[0]

    def _read(self, row: ApiKey, shared_balances: dict[int, int | None]) -> KeyRead:
        read = KeyRead.from_row(row)
        holder_id = row.quota_holder_id or row.id
        balance = shared_balances.get(holder_id) if row.quota_holder_id is not None else row.quota_remaining
        if balance is not None:
            read.quota_remaining = balance + self.quotas.local_balance(holder_id)
        if row.quota_holder_id is None:  # a key in its rotation grace shows its successor's balance as stored
            read.quota_remaining, read.quota_refilled_at = current_balance(
                read.quota_remaining, row.quota_refill, row.quota_refilled_at, self.clock()
            )
        pending = self.usage.pending_for(row.id)
        if pending is not None:
            read.use_count += pending.count
            read.last_used_at = max(read.last_used_at or pending.last_used_at, pending.last_used_at)
        return read

    # Changes: each commits, then announces the keys whose state changed.

    async def create(self, *, owner_id: int, spec: KeyCreate, ip: str | None = None) -> IssuedKey:
        now = self.clock()
        if spec.identity_id is not None:
            await self._check_identity(spec.identity_id, owner_id)
        issued = await self._issue(owner_id=owner_id, spec=spec, expires_at=_expiry(spec, now), now=now)
        audit.record(self.session, at=now, action="key.created", actor_id=owner_id, api_key_id=issued.row.id, ip=ip)
        events.emit_key_event(self.session, "key.created", issued.row, at=now)
        # Announced like any change: other instances' indexes of existing key_ids learn it (keys/key_ids.py).
        await self._commit_and_announce([issued.row])
        return issued

    async def update(self, row: ApiKey, changes: KeyUpdate, *, actor_id: int, ip: str | None) -> None:
        """Apply the fields present in `changes`; record one `key.updated` event naming them (and `key.disabled` or
        `key.enabled` when `enabled` changes).

        A rotated key's expiry is the end of its grace and its quota is its successor's: changing either would let
        the old key outlive the rotation or split the shared balance, so both are a conflict.
        """
        now = self.clock()
        fields = changes.model_fields_set
        if fields & {"expires_at", "expires_in", "quota", "quota_refill"} and await self._successor_id(row) is not None:
            raise KeyStateConflictError("this key was rotated: its expiry and quota follow the rotation")
        if changes.enabled and not row.is_active:
            raise KeyStateConflictError("a revoked key cannot be enabled: revocation is final")
        if changes.identity_id is not None:
            await self._check_identity(changes.identity_id, row.user_id)
        if "expires_in" in fields:
            assert changes.expires_in is not None
            row.expires_at = now + timedelta(seconds=changes.expires_in)
        if "expires_at" in fields:
            row.expires_at = _checked_expires_at(changes.expires_at, now)
        if changes.name is not None:
            row.name = changes.name
        if "scopes" in fields:
            row.scopes = list(changes.scopes or [])
        if "ip_allowlist" in fields:
            row.ip_allowlist = list(changes.ip_allowlist or [])
        if "metadata" in fields:
            row.key_metadata = dict(changes.metadata or {})
        if "rate_limit" in fields:
            row.rate_limit = changes.rate_limit
        if "quota_refill" in fields:
            row.quota_refill = changes.quota_refill
            row.quota_refilled_at = None
            if changes.quota_refill is not None:
                row.quota_refilled_at = changes.quota_refill.period_start(now)
                if "quota" not in fields:
                    row.quota_remaining = changes.quota_refill.amount
                    row.quota_holder_id = None
        if "quota" in fields:
            row.quota_remaining = changes.quota
            row.quota_holder_id = None
        if "identity_id" in fields:
            row.identity_id = changes.identity_id
        # Pausing and resuming are events of their own (key.disabled, key.enabled); any other change is key.updated.
        if changes.enabled is not None and changes.enabled != row.enabled:
            row.enabled = changes.enabled
            action = "key.enabled" if changes.enabled else "key.disabled"
            audit.record(self.session, at=now, action=action, actor_id=actor_id, api_key_id=row.id, ip=ip)
            events.emit_key_event(self.session, action, row, at=now)
        if updated := sorted(fields - {"enabled"}):
            detail = {"fields": updated}
            audit.record(
                self.session, at=now, action="key.updated", actor_id=actor_id, api_key_id=row.id, ip=ip, detail=detail
            )
            events.emit_key_event(self.session, "key.updated", row, at=now)
        await self._commit_and_announce([row], quota_reset=[row.id] if fields & {"quota", "quota_refill"} else [])

    async def revoke(self, row: ApiKey, *, actor_id: int, ip: str | None) -> None:
        """Revoke `row`. Idempotent: revoking a revoked key changes and records nothing."""
        if not row.is_active:
            return
        now = self.clock()
        row.is_active = False
        row.revoked_at = now
        audit.record(self.session, at=now, action="key.revoked", actor_id=actor_id, api_key_id=row.id, ip=ip)
        events.emit_key_event(self.session, "key.revoked", row, at=now)
        await self._commit_and_announce([row])

    async def rotate(self, row: ApiKey, *, grace_seconds: int, actor_id: int, ip: str | None) -> IssuedKey:
        """Issue a successor with the same settings; the old key works until the grace ends, then is refused.

        A key is rotated at most once: a second rotation would fork its history into two live successors.
        """
        now = self.clock()
        if not row.is_active:
            raise KeyStateConflictError("a revoked key cannot be rotated")
        if row.expires_at is not None and row.expires_at <= now:
            raise KeyStateConflictError("an expired key cannot be rotated")
        if await self._successor_id(row) is not None:
            raise KeyStateConflictError("this key was already rotated")
        spec = KeyCreate(
            name=row.name,
            scopes=row.scopes,
            rate_limit=row.rate_limit,
            quota=row.quota_remaining,
            quota_refill=row.quota_refill,
            ip_allowlist=row.ip_allowlist,
            metadata=row.key_metadata,
            identity_id=row.identity_id,
        )
        issued = await self._issue(
            owner_id=row.user_id, spec=spec, expires_at=row.expires_at, now=now, rotated_from=row.id
        )
        issued.row.enabled = row.enabled
        issued.row.quota_refilled_at = row.quota_refilled_at  # the balance moves within its period, not refilled
        changed = [row, issued.row]  # the successor is a new key: announced like a created one
        if row.quota_remaining is not None:
            # One balance for both keys: it moves to the new key, and the old one spends from it until the grace
            # ends. This process's unspent lease goes with it. Older keys of the chain still in their grace follow.
            issued.row.quota_remaining = row.quota_remaining + self.quotas.local_balance(row.id)
            row.quota_remaining = None
            row.quota_refill = None  # the successor holds the balance, and refills it
            row.quota_holder_id = issued.row.id
            predecessors = await self.session.scalars(select(ApiKey).where(ApiKey.quota_holder_id == row.id))
            for predecessor in predecessors:
                predecessor.quota_holder_id = issued.row.id
                changed.append(predecessor)
        grace_end = now + timedelta(seconds=grace_seconds)
        row.expires_at = grace_end if row.expires_at is None else min(row.expires_at, grace_end)
        detail = {"new_api_key_id": issued.row.id, "grace_seconds": grace_seconds}
        audit.record(
            self.session, at=now, action="key.rotated", actor_id=actor_id, api_key_id=row.id, ip=ip, detail=detail
        )
        events.emit_key_event(self.session, "key.rotated", issued.row, at=now)  # the new key, naming the old
        await self._commit_and_announce(changed, quota_reset=[row.id])  # its balance moved to the new key
        return issued

    async def _commit_and_announce(self, changed: Sequence[ApiKey], *, quota_reset: Sequence[int] = ()) -> None:
        """Commit, then announce the changed keys, and the keys whose balance was set anew (`quota_reset`: their
        leases are void everywhere; on any other change a lease stays, so no unit is lost)."""
        # Read before the commit: the ids are all that is announced, and nothing reloads them afterwards.
        refs = [(row.key_id, row.id) for row in changed]
        await self.session.commit()
        for key_id, api_key_id in refs:
            await self.invalidator.key_changed(key_id, api_key_id)
        for holder_id in quota_reset:
            await self.invalidator.quota_reset("key", holder_id)

    async def _issue(
        self,
        *,
        owner_id: int,
        spec: KeyCreate,
        expires_at: datetime | None,
        now: datetime,
        rotated_from: int | None = None,
    ) -> IssuedKey:
        for attempt in range(_KEY_ID_ATTEMPTS):
            new_key = key_format.generate_key(self.prefix)
            row = ApiKey(
                key_id=new_key.key_id,
                key_hash=key_format.hash_key(new_key.raw, self.pepper),
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
                rate_limit=spec.rate_limit,
                quota_remaining=spec.quota_refill.amount if spec.quota is None and spec.quota_refill else spec.quota,
                quota_refill=spec.quota_refill,
                quota_refilled_at=spec.quota_refill.period_start(now) if spec.quota_refill is not None else None,
                identity_id=spec.identity_id,
                enabled=True,
                rotated_from=rotated_from,
            )
            try:
                async with self.session.begin_nested():
                    self.session.add(row)
            except IntegrityError:
                if attempt == _KEY_ID_ATTEMPTS - 1:
                    raise
                continue
            break
        return IssuedKey(row=row, raw=new_key.raw)

    async def _check_identity(self, identity_id: int, owner_id: int) -> None:
        """A key may name only an identity of its own owner's: another's is 'not found', as for keys."""
        query = select(Identity.id).where(Identity.id == identity_id, Identity.user_id == owner_id)
        if await self.session.scalar(query) is None:
            raise IdentityNotFoundError(identity_id)

    async def _successor_id(self, row: ApiKey) -> int | None:
        return await self.session.scalar(select(ApiKey.id).where(ApiKey.rotated_from == row.id))


def _expiry(spec: KeyCreate, now: datetime) -> datetime | None:
    if spec.expires_in is not None:
        return now + timedelta(seconds=spec.expires_in)
    return _checked_expires_at(spec.expires_at, now)


def _checked_expires_at(expires_at: datetime | None, now: datetime) -> datetime | None:
    """An `expires_at` in the future and at most as far as `expires_in` reaches (10 years): a Unix time given in
    milliseconds reads as a date thousands of years away, which nobody means."""
    if expires_at is None:
        return None
    if expires_at <= now:
        raise InvalidKeySettingsError("expires_at", "expires_at must lie in the future")
    if expires_at > now + timedelta(seconds=MAX_EXPIRES_IN_SECONDS):
        raise InvalidKeySettingsError("expires_at", "expires_at must lie within 10 years")
    return expires_at
