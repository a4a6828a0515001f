"""What the key cache calls on a miss: one key's record read from the database (docs/PERFORMANCE.md, "The cold path").

With many keys each used rarely most verifications are misses, so this is the figure that matters at scale. A miss is
one SELECT (`RECORD_QUERY`) on a connection kept between misses in autocommit mode: no session, no ORM object, and
none of the round trips a fresh checkout costs around the one SELECT (the pool's pre-ping, BEGIN, the ROLLBACK on
return).

The SELECT goes straight to the driver's connection under SQLAlchemy's, as SQL compiled once for the dialect, and
SQLAlchemy's machinery around one row (a greenlet switch, the execution context, the cursor and result objects) is
skipped; its type conversions are kept, applied here to the columns whose types convert results, the way SQLAlchemy
would (on SQLite: JSON text, integer booleans, datetimes; on PostgreSQL only UTC datetimes, as the connection's JSON
codecs are SQLAlchemy's own). On PostgreSQL asyncpg prepares the statement once per connection (its statement cache).
On SQLite, aiosqlite runs each call in the connection's thread: `execute_fetchall` is one hop there and back, where
SQLAlchemy's cursor makes four (cursor, execute, fetch, close), and a hop is what an async SQLite read costs most.
Other drivers run the SELECT through SQLAlchemy Core.

A kept connection is not pinged before use, so one the database dropped (a restart, a failover) fails at its next
SELECT; that SELECT is then retried once on a fresh checkout, which the pool does ping: what the pre-ping would have
done, paid only when it is needed.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from keystile.db import DatabaseIncidents, is_database_unavailable
from keystile.keys.records import RECORD_QUERY, KeyRecord

# Connections a KeyLoader keeps between misses. Two serve misses one after another, and a few at once without
# waiting; more concurrent misses check out more from the pool and give them back. Few, because the engine's pool is
# shared with everything else (usage flushes, key management, logins).
KEPT_CONNECTIONS = 2


class _Kept(NamedTuple):
    connection: AsyncConnection
    driver: Any  # the driver's connection under it (asyncpg, aiosqlite), or None to run the SELECT through SQLAlchemy


class _DriverQuery(NamedTuple):
    """RECORD_QUERY as the driver runs it: its SQL, and the conversions SQLAlchemy would apply to its columns."""

    sql: str
    conversions: tuple[tuple[int, Callable[[Any], Any]], ...]  # (column position, converter)
    driver: str

    @classmethod
    def for_dialect(cls, dialect: Dialect) -> _DriverQuery | None:
        if dialect.driver not in ("asyncpg", "aiosqlite"):
            return None
        conversions = []
        for position, column in enumerate(RECORD_QUERY.selected_columns):
            convert = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if convert is not None:
                conversions.append((position, convert))
        return cls(RECORD_QUERY.compile(dialect=dialect).string, tuple(conversions), dialect.driver)

    async def fetch(self, driver: Any, key_id: str) -> Sequence[Any] | None:
        """The one row for `key_id` on the driver's connection, converted, or None."""
        if self.driver == "asyncpg":
            record = await driver.fetchrow(self.sql, key_id)  # its errors carry a SQLSTATE, which db.py reads
        else:
            try:
                rows = await driver.execute_fetchall(self.sql, (key_id,))
            except sqlite3.Error as error:
                # Wrapped as SQLAlchemy would: "database is locked" is then an OperationalError, an outage (db.py).
                raise DBAPIError.instance(self.sql, (key_id,), error, sqlite3.Error) from error
            record = rows[0] if rows else None
        return None if record is None else self._converted(record)

    def _converted(self, record: Sequence[Any]) -> Sequence[Any]:
        values = list(record)
        for position, convert in self.conversions:
            values[position] = convert(values[position])
        return values


class KeyLoader:
    """Reads one key's record from the database: what the cache calls on a miss or a stale entry."""

    def __init__(self, engine: AsyncEngine, incidents: DatabaseIncidents, *, keep: int = KEPT_CONNECTIONS) -> None:
        self._engine = engine
        self._incidents = incidents
        self._keep = keep
        self._driver_query = _DriverQuery.for_dialect(engine.dialect)
        self._idle: list[_Kept] = []
        self._closed = False
        # SELECTs sent to the driver directly, which SQLAlchemy's events (`before_cursor_execute`) do not see: how
        # the tests and bench_verify count this loader's reads along with every other statement.
        self.driver_reads = 0

    async def __call__(self, key_id: str) -> KeyRecord | None:
        try:
            row = await self._select(key_id)
        except Exception as error:
            # Reported here because the cache may answer from a stale entry: no request fails, yet the outage is news.
            self._incidents.report(error)
            raise
        return None if row is None else KeyRecord.from_columns(row)

    async def close(self) -> None:
        """Give the kept connections back to the pool (before the engine is disposed)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for kept in idle:
            await kept.connection.close()

    async def _select(self, key_id: str) -> Sequence[Any] | None:
        if self._idle:
            try:
                return await self._run(self._idle.pop(), key_id)
            except Exception as error:
                if not is_database_unavailable(error):
                    raise
        return await self._run(await self._checkout(), key_id)

    async def _checkout(self) -> _Kept:
        connection = await self._engine.connect()
        try:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            driver = None
            if self._driver_query is not None:
                driver = (await connection.get_raw_connection()).driver_connection
        except BaseException:
            await _discard(connection)
            raise
        return _Kept(connection, driver)

    async def _run(self, kept: _Kept, key_id: str) -> Sequence[Any] | None:
        try:
            if self._driver_query is None or kept.driver is None:  # the one implies the other (`_checkout`)
                row: Sequence[Any] | None = (await kept.connection.execute(RECORD_QUERY, {"key_id": key_id})).first()
            else:
                self.driver_reads += 1
                row = await self._driver_query.fetch(kept.driver, key_id)
        except BaseException as error:
            await _discard(kept.connection)
            if kept.driver is not None and _closed(kept.driver) and isinstance(error, Exception):
                # What SQLAlchemy would have made of it: the driver's own error for a dropped connection carries no
                # SQLSTATE, and this is what callers read as "the database is unavailable" (db.py).
                raise DisconnectionError("the database closed the connection") from error
            raise
        if self._closed or len(self._idle) >= self._keep:
            await kept.connection.close()
        else:
            self._idle.append(kept)
        return row


def _closed(driver: Any) -> bool:
    """Whether a server dropped the driver's connection (asyncpg); a SQLite file has no server to drop it."""
    is_closed = getattr(driver, "is_closed", None)
    return is_closed is not None and bool(is_closed())


async def _discard(connection: AsyncConnection) -> None:
    """Drop a connection whose state is unknown (a failed or interrupted statement): the pool replaces it."""
    with contextlib.suppress(Exception):
        await connection.invalidate()
    with contextlib.suppress(Exception):
        await connection.close()
