"""The flush's upserts: add one hour's counts of a key or an identity to the stored row, creating it if need be.

`INSERT ... SELECT ... FROM <parent> WHERE id = :subject ON CONFLICT (subject, hour) DO UPDATE SET n = n + excluded.n`:
- the conflict clause adds, so counts written by several processes (or by several flushes of one hour) add up;
- selecting the values from the parent row inserts nothing once the key or identity is deleted, instead of failing on
  the foreign key, so their last counts are dropped rather than kept forever by a flush that can never succeed.
  (SQLite needs a WHERE in an upsert's SELECT anyway: without one, ON would be read as a join's.)
A key deleted between the SELECT and the foreign-key check fails that one flush; its counts go back to the buffer and
the next flush drops them.

Built once per dialect; executed with one parameter set per bucket (an executemany: one round trip on asyncpg).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from keystile.db import UTCDateTime
from keystile.identities.models import Identity
from keystile.keys.models import ApiKey
from keystile.usage.models import COUNT_COLUMNS, IdentityUsageHour, KeyUsageHour

_INSERTS: dict[str, Callable[[Table], Any]] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def row(subject_id: int, hour: datetime, counts: Sequence[int]) -> dict[str, Any]:
    """The parameters of one bucket's upsert."""
    return {"subject": subject_id, "hour": hour, **dict(zip(COUNT_COLUMNS, counts, strict=True))}


@functools.cache
def key_hours(dialect: str) -> Insert:
    return _upsert(dialect, _table(KeyUsageHour), "api_key_id", _table(ApiKey))


@functools.cache
def identity_hours(dialect: str) -> Insert:
    return _upsert(dialect, _table(IdentityUsageHour), "identity_id", _table(Identity))


def _table(model: Any) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _upsert(dialect: str, table: Table, subject_column: str, parent: Table) -> Insert:
    insert = _INSERTS.get(dialect)
    if insert is None:
        raise NotImplementedError(f"usage history is written on SQLite and PostgreSQL, not {dialect}")
    subject = bindparam("subject", type_=Integer)
    values = (
        select(
            subject,
            bindparam("hour", type_=UTCDateTime),
            *(bindparam(column, type_=BigInteger) for column in COUNT_COLUMNS),
        )
        .select_from(parent)
        .where(parent.c.id == subject)
    )
    statement = insert(table).from_select([subject_column, "hour", *COUNT_COLUMNS], values)
    added = {column: table.c[column] + statement.excluded[column] for column in COUNT_COLUMNS}
    upsert: Insert = statement.on_conflict_do_update(index_elements=[table.c[subject_column], table.c.hour], set_=added)
    return upsert
