"""Identities: reads and changes, each change committed and then announced to every instance.

A change to an identity's limits must reach the cached records of all its keys (they carry the identity's policy) and
drop this process's lease on its quota, here at once and, through Redis, everywhere else, as key changes do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keystile.clock import Clock
from keystile.identities.models import Identity
from keystile.identities.schemas import IdentityCreate, IdentityRead, IdentityUpdate
from keystile.keys.invalidation import Invalidator
from keystile.keys.models import ApiKey
from keystile.keys.quota import QuotaLedger
from keystile.refill import current_balance


class IdentityNotFoundError(Exception):
    pass


class IdentityConflictError(Exception):
    """An external_id the owner already uses, or a delete while keys still name the identity."""


@dataclass(frozen=True, slots=True)
class IdentityManager:
    session: AsyncSession
    _: KW_ONLY
    clock: Clock
    quotas: QuotaLedger  # identities' balances
    invalidator: Invalidator

    async def list_page(self, *, owner_id: int, limit: int, offset: int) -> list[Identity]:
        query = (
            select(Identity)
            .where(Identity.user_id == owner_id)
            .order_by(Identity.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return list((await self.session.scalars(query)).all())

    async def get(self, identity_id: int, *, owner_id: int, for_update: bool = False) -> Identity:
        """The identity, if `owner_id` owns it: someone else's is 'not found', like a key."""
        query = select(Identity).where(Identity.id == identity_id, Identity.user_id == owner_id)
        if for_update:
            query = query.with_for_update()
        row = await self.session.scalar(query)
        if row is None:
            raise IdentityNotFoundError(identity_id)
        return row

    def read(self, rows: Sequence[Identity]) -> list[IdentityRead]:
        """As stored, with this process's unspent lease counted as remaining and a due refill shown as done."""
        now = self.clock()
        reads = []
        for row in rows:
            read = IdentityRead.from_row(row)
            if read.quota_remaining is not None:
                read.quota_remaining += self.quotas.local_balance(row.id)
            read.quota_remaining, read.quota_refilled_at = current_balance(
                read.quota_remaining, row.quota_refill, row.quota_refilled_at, now
            )
            reads.append(read)
        return reads

    async def create(self, *, owner_id: int, spec: IdentityCreate) -> Identity:
        now = self.clock()
        quota = spec.quota
        if quota is None and spec.quota_refill is not None:
            quota = spec.quota_refill.amount
        row = Identity(
            user_id=owner_id,
            external_id=spec.external_id,
            identity_metadata=spec.metadata,
            rate_limit=spec.rate_limit,
            quota_remaining=quota,
            quota_refill=spec.quota_refill,
            quota_refilled_at=spec.quota_refill.period_start(now) if spec.quota_refill is not None else None,
            created_at=now,
        )
        self.session.add(row)
        await self._commit(row)
        return row

    async def update(self, row: Identity, changes: IdentityUpdate) -> None:
        fields = changes.model_fields_set
        if changes.external_id is not None:
            row.external_id = changes.external_id
        if changes.metadata is not None:
            row.identity_metadata = dict(changes.metadata)
        if "rate_limit" in fields:
            row.rate_limit = changes.rate_limit
        if "quota_refill" in fields:
            row.quota_refill = changes.quota_refill
            row.quota_refilled_at = None
            if changes.quota_refill is not None:
                row.quota_refilled_at = changes.quota_refill.period_start(self.clock())
                if "quota" not in fields:
                    row.quota_remaining = changes.quota_refill.amount
        if "quota" in fields:
            row.quota_remaining = changes.quota
        await self._commit(row)
        if fields & {"quota", "quota_refill"}:
            await self.invalidator.quota_reset("identity", row.id)

    async def delete(self, row: Identity) -> None:
        """Delete an identity no key names any more; while one does, 409 (the keys would lose their shared limits)."""
        if await self.session.scalar(select(exists().where(ApiKey.identity_id == row.id))):
            raise IdentityConflictError("keys still belong to this identity: move or revoke them first")
        identity_id = row.id
        await self.session.delete(row)
        await self.session.commit()
        await self.invalidator.identity_changed(identity_id)

    async def _commit(self, row: Identity) -> None:
        try:
            await self.session.flush()
        except IntegrityError:
            await self.session.rollback()
            raise IdentityConflictError("you already have an identity with this external_id") from None
        identity_id = row.id
        await self.session.commit()
        await self.invalidator.identity_changed(identity_id)
