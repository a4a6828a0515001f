from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from keystile.audit import models as _audit_models  # noqa: F401  (registers tables on Base.metadata)
from keystile.db import Base, create_engine
from keystile.events import models as _event_models  # noqa: F401  (and webhooks.models, which it imports)
from keystile.keys import models as _key_models  # noqa: F401
from keystile.ui import models as _ui_models  # noqa: F401
from keystile.usage import models as _usage_models  # noqa: F401
from keystile.users import models as _user_models  # noqa: F401

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(context.config.attributes["database_url"])
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("keystile migrations run online only")
asyncio.run(_run_online())
