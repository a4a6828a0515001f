"""Engine, sessions and the declarative base shared by every domain package."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, MetaData, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

# Stable constraint names make Alembic migrations reproducible across SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Integer ids are 32-bit in PostgreSQL: a larger one would fail in the driver (a 500) instead of being "not found".
MAX_ID = 2**31 - 1


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values and would hand them back naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# How long a new PostgreSQL connection may take: asyncpg waits 60 s by default, and a host that stops answering (rather
# than refusing) would hold every cache reload and request that long before the outage is even noticed.
CONNECT_TIMEOUT_SECONDS = 5


def create_engine(database_url: str, **kwargs: Any) -> AsyncEngine:
    if make_url(database_url).get_backend_name() == "postgresql":
        kwargs.setdefault("connect_args", {"timeout": CONNECT_TIMEOUT_SECONDS})
    engine = create_async_engine(database_url, pool_pre_ping=True, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _configure_sqlite)
        database = engine.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            event.listen(engine.sync_engine, "do_connect", functools.partial(_create_private_file, Path(database)))
    return engine


def _create_private_file(path: Path, *_args: Any) -> None:
    """Before SQLite opens a database file that does not exist yet, create it readable by this user alone (0600),
    like the secret beside it: it holds the key hashes and password hashes. SQLite's -wal and -shm files take the
    same mode."""
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy_timeout makes writers queue instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# Database outages: which errors mean "unreachable right now" (a 503 to retry, never a 500), one log line per incident.

logger = logging.getLogger(__name__)

# SQLSTATEs of a server that cannot serve now, not of a wrong statement: class 08 (connection exception), shutting
# down / crashed / starting up (57P01-57P03), too many connections (53300), a replica not yet promoted (25006).
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300", "25006")


def is_database_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached or used now, rather than that a query or its data is wrong.

    The one definition used by the key cache (serve stale entries), the usage recorder and the 503 handler. Refused
    and timed-out connections surface as OSError (asyncpg raises them unwrapped at connect), a server starting up as
    a driver error carrying its SQLSTATE, a connection cut mid-query as a DBAPIError that invalidated it.
    """
    if isinstance(error, OSError | sa_exc.TimeoutError | sa_exc.DisconnectionError | sa_exc.OperationalError):
        return True  # OperationalError: SQLite's "unable to open", "disk I/O error", "locked" beyond busy_timeout
    cause: BaseException | None = error
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated or isinstance(error.orig, OSError):
            return True
        cause = error.orig
    sqlstate = getattr(cause, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


def _cause(error: BaseException) -> str:
    # The driver's error, not SQLAlchemy's wrapper: that one quotes the statement and its parameters (emails, hashes).
    if isinstance(error, sa_exc.DBAPIError) and error.orig is not None:
        error = error.orig
    return f"{type(error).__name__}: {error}"


class DatabaseIncidents:
    """Outages of one engine, each logged once: its first failure at error level (no traceback), its end as a warning.

    Every part that meets a database error reports it here; an incident ends with the next statement that completes,
    whichever part runs it. So a down database costs one log line however many requests, flushes and probes fail.
    """

    def __init__(self, engine: AsyncEngine, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._down_since: float | None = None
        event.listen(engine.sync_engine, "after_cursor_execute", self._statement_completed)

    @property
    def is_down(self) -> bool:
        return self._down_since is not None

    def report(self, error: BaseException) -> bool:
        """Note `error` if it means the database is unavailable (logging it if it starts an incident); whether so."""
        if not is_database_unavailable(error):
            return False
        if self._down_since is None:
            self._down_since = self._monotonic()
            logger.error("database unavailable, answering 503 where it is needed until it is back: %s", _cause(error))
        return True

    def _statement_completed(self, *_event_args: Any) -> None:
        if self._down_since is not None:
            logger.warning("database is back after %.1fs", self._monotonic() - self._down_since)
            self._down_since = None
