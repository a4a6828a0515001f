"""Leak response: a reported raw key is classified with its checksum and its hash, then acted on.

A true positive is a string that is a well-formed key of this deployment (checksum first, no I/O) whose secret
matches a stored hash, whoever owns it and whatever its state: holding the raw key is the leak. Each report of one
is audited (`key.leaked`, with source and url) and sent to the owner's webhooks (`key.leaked`); an active key is then
revoked through the one change path (`KeyManager.revoke`, which audits and announces `key.revoked` too), unless
KEYSTILE_LEAK_ACTION=notify. Anything else is a false positive and changes nothing.

The raw keys are never logged or stored: only hints (prefix, key_id and last 4 characters) leave this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import select

from keystile.audit import service as audit
from keystile.events import outbox, types
from keystile.keys import format as key_format
from keystile.keys.models import ApiKey
from keystile.keys.service import KeyManager

Label = Literal["true_positive", "false_positive"]
LeakAction = Literal["revoke", "notify"]


@dataclass(frozen=True, slots=True)
class Classified:
    label: Label
    hint: str
    row: ApiKey | None = field(default=None, repr=False)


def hint_of(presented: str, key_id: str | None) -> str:
    """What may be shown of a reported string: a key's usual hint, or for anything else at most its two ends."""
    if key_id is not None:
        return key_format.hint_for(presented)
    return f"{presented[:4]}…{presented[-4:]}" if len(presented) >= 16 else "…"


@dataclass(frozen=True, slots=True)
class LeakIntake:
    keys: KeyManager
    prefix: str
    hashers: dict[str, Callable[[str], bytes]] = field(repr=False)
    action: LeakAction

    async def classify(self, presented: str) -> Classified:
        key_id = key_format.key_id_of(presented, self.prefix)
        hint = hint_of(presented, key_id)
        if key_id is None:
            return Classified("false_positive", hint)
        row = await self.keys.session.scalar(select(ApiKey).where(ApiKey.key_id == key_id).with_for_update())
        hasher = self.hashers.get(row.hash_scheme) if row is not None else None
        if row is None or hasher is None or not key_format.hashes_match(hasher(presented), bytes.fromhex(row.key_hash)):
            return Classified("false_positive", hint)
        return Classified("true_positive", row.hint, row)

    async def report(
        self, presented: Sequence[str], *, source: str, url: str | None, actor_id: int | None, ip: str | None
    ) -> list[Classified]:
        """Classify and act on each string in order; the answers in the same order."""
        answers = []
        for raw in presented:
            classified = await self.classify(raw)
            if classified.row is not None:
                await self._act(classified.row, source=source, url=url, actor_id=actor_id, ip=ip)
            answers.append(classified)
        return answers

    async def _act(self, row: ApiKey, *, source: str, url: str | None, actor_id: int | None, ip: str | None) -> None:
        session = self.keys.session
        now = self.keys.clock()
        revoke = row.is_active and self.action == "revoke"
        taken = "revoked" if revoke else "notified" if row.is_active else "already_inactive"
        leak = {"source": source, "url": url, "action": taken}
        audit.record(session, at=now, action=types.KEY_LEAKED, actor_id=actor_id, api_key_id=row.id, ip=ip, detail=leak)
        data = outbox.key_data(row) | {"leak": leak}
        outbox.emit(session, outbox.PendingEvent(types.KEY_LEAKED, row.user_id, data, now, api_key_id=row.id))
        if revoke:
            # Commits the leak's audit and event with the revocation, in one transaction. A scanner has no account:
            # the revocation is then recorded in the owner's name, the key.leaked entry without an actor.
            await self.keys.revoke(row, actor_id=actor_id if actor_id is not None else row.user_id, ip=ip)
        else:
            await session.commit()
