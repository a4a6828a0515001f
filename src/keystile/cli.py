"""The `keystile` command line (README, "Command line"). Commands read the same KEYSTILE_* settings as the server.

A problem the user can fix (the database or Redis does not answer, the schema is missing or out of date) is told in a
line or two, what is wrong and what to do, with exit status 1; settings that do not validate exit 2. The traceback
is added only with KEYSTILE_LOG_LEVEL=debug. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import redis.asyncio as redis
import typer
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from keystile import __version__, migrations
from keystile.db import create_engine
from keystile.events import replay
from keystile.instance import Keystile
from keystile.keys.models import ApiKey
from keystile.keys.schemas import KeyCreate
from keystile.keys.service import KeyNotFoundError
from keystile.logs import uvicorn_log_config
from keystile.metrics import worker_directory
from keystile.migrations import SchemaState
from keystile.ratelimit.guard import LimiterClosedError
from keystile.ratelimit.policy import RateLimitPolicy
from keystile.settings import Settings
from keystile.users import service as users_service
from keystile.users.schemas import UserCreate
from keystile.webhooks import overview
from keystile.webhooks.models import WebhookEndpoint

if TYPE_CHECKING:
    import uvicorn  # imported when serving: other commands start faster without it

app = typer.Typer(help="keystile: self-hosted API keys.", no_args_is_help=True, add_completion=False)
users_app = typer.Typer(help="Manage users.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
webhooks_app = typer.Typer(help="Inspect webhook endpoints.", no_args_is_help=True)
events_app = typer.Typer(help="Work with events sent to webhooks.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(events_app, name="events")

T = TypeVar("T")

RUN_MIGRATE = "run `keystile migrate`"
REDIS_ADVICE = "check that Redis is running and that KEYSTILE_REDIS_URL points at it"


class CommandFailure(Exception):
    """A problem the user can fix: what is wrong, and what to do about it."""

    def __init__(self, problem: str, advice: str) -> None:
        super().__init__(f"{problem}\n{advice}")


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(f"keystile {__version__}")
        raise typer.Exit


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """keystile: self-hosted API keys."""


def _settings() -> Settings:
    try:
        settings = Settings()
        if not settings.is_embedded:
            settings.resolved_secret_key()  # touches no file here: only checks that KEYSTILE_SECRET_KEY is set
    except (ValueError, RuntimeError) as error:
        typer.echo(f"invalid settings: {error}", err=True)
        raise typer.Exit(2) from None
    return settings


@contextlib.contextmanager
def _failures_explained(settings: Settings) -> Iterator[None]:
    """The one place where known operational failures become their short message and exit status 1.

    - the database does not answer (refused, unknown host, no such database or role, SQLite directory missing):
      found when connecting, before any work, and told with the URL (never its password) and what to check;
    - no schema, or an older one: "run `keystile migrate`". Commands other than `migrate` and `serve` never migrate:
      run from the wrong directory, or against the wrong KEYSTILE_DATABASE_URL, they must not create a database, and
      upgrading a shared database stays a deliberate step. A missing SQLite file is reported, never created;
    - a schema from a newer keystile: refused, `migrate` included;
    - the database failing mid-command (SQLite "database is locked", a dropped connection);
    - Redis down while KEYSTILE_RATE_LIMIT_FAILURE=closed (`keys verify`). Elsewhere an unreachable Redis is a warning:
      a revoke is committed, and other instances drop the key within the cache TTL even without the broadcast.
    """
    try:
        yield
    except CommandFailure as failure:
        _fail(failure, str(failure), settings)
    except (OperationalError, InterfaceError) as error:
        problem = f"the database at {_shown(make_url(settings.database_url))} failed: {_reason(error)}"
        _fail(
            error, f"{problem}\ntry again; if it keeps failing, check the database and KEYSTILE_DATABASE_URL", settings
        )
    except LimiterClosedError as error:
        problem = "cannot verify without the rate limiter: Redis does not answer and KEYSTILE_RATE_LIMIT_FAILURE=closed"
        _fail(error, f"{problem}\n{REDIS_ADVICE}", settings)


def _fail(error: BaseException, message: str, settings: Settings) -> NoReturn:
    if settings.log_level == "debug":
        traceback.print_exception(error)
    typer.echo(message, err=True)
    raise typer.Exit(1) from None


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _reason(error: BaseException) -> str:
    """The driver's own words, first line only: SQLAlchemy's text adds the statement and its parameters (user data)."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _database_advice(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return "check KEYSTILE_DATABASE_URL: the file's directory must exist and be writable"
    return "check that the database server is running and KEYSTILE_DATABASE_URL (host, port, database, user)"


def _sqlite_file(database_url: str) -> Path | None:
    """The file a SQLite URL names; None for other databases and in-memory or URI-style SQLite."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") or url.database.startswith("file:"):
        return None
    return Path(url.database)


def _refuse_missing_sqlite_file(settings: Settings) -> None:
    # Connecting would create an empty file, which every later command would then take for a broken database.
    path = _sqlite_file(settings.database_url)
    if path is not None and not path.exists():
        advice = f"{RUN_MIGRATE} to create it, or set KEYSTILE_DATABASE_URL to the database you mean"
        raise CommandFailure(f"there is no keystile database at {path.resolve()}", advice)


async def _connect(engine: AsyncEngine) -> AsyncConnection:
    """A connection, or the CommandFailure that says why the database does not answer."""
    try:
        return await engine.connect()
    except (OSError, DBAPIError) as error:
        problem = f"cannot connect to the database at {_shown(engine.url)}: {_reason(error)}"
        raise CommandFailure(problem, _database_advice(engine.url)) from error


async def _schema_state(engine: AsyncEngine) -> SchemaState:
    connection = await _connect(engine)
    try:
        return await connection.run_sync(migrations.schema_state)
    finally:
        await connection.close()


def _newer_schema(engine: AsyncEngine) -> CommandFailure:
    return CommandFailure(
        f"the database at {_shown(engine.url)} was migrated by a newer keystile than this one ({__version__})",
        "use that keystile, or a newer one, with this database",
    )


async def _require_current_schema(engine: AsyncEngine) -> None:
    state = await _schema_state(engine)
    database = _shown(engine.url)
    if state is SchemaState.MISSING:
        raise CommandFailure(f"the database at {database} has no keystile schema", f"{RUN_MIGRATE} to create it")
    if state is SchemaState.BEHIND:
        raise CommandFailure(f"the database at {database} has an older keystile schema", f"{RUN_MIGRATE} first")
    if state is SchemaState.UNKNOWN:
        raise _newer_schema(engine)


async def _check_before_migrating(database_url: str) -> None:
    """The database answers, and its schema is not from a newer keystile (which this one cannot migrate)."""
    engine = create_engine(database_url)
    try:
        if await _schema_state(engine) is SchemaState.UNKNOWN:
            raise _newer_schema(engine)
    finally:
        await engine.dispose()


async def _redis_problem(redis_url: str) -> str | None:
    """Why Redis does not answer a PING now (redis-py's words: host and port, never the password), or None."""
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
    except (RedisError, OSError) as error:
        return str(error) or type(error).__name__
    finally:
        await client.aclose()
    return None


class _OneLineFormatter(logging.Formatter):
    """`warning: <message>` on one line; the traceback too only at KEYSTILE_LOG_LEVEL=debug."""

    def __init__(self, *, with_traceback: bool) -> None:
        super().__init__()
        self.with_traceback = with_traceback

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname.lower()}: {record.getMessage()}"
        if self.with_traceback and record.exc_info:
            return f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _log_to_stderr(settings: Settings) -> None:
    """keystile's own warnings (a broadcast that failed, a limiter failing open) as one line each on stderr."""
    debug = settings.log_level == "debug"
    logger = logging.getLogger("keystile")
    for handler in [h for h in logger.handlers if isinstance(h.formatter, _OneLineFormatter)]:
        logger.removeHandler(handler)  # run twice in one process (tests): one line per record, not two
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLineFormatter(with_traceback=debug))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)


def _run(settings: Settings, work: Callable[[Keystile, AsyncSession], Awaitable[T]]) -> T:
    """Run `work` with a session inside a started instance, which is stopped as the server stops it: usage written,
    quota leases returned, connections closed. The database must exist with the current schema (see
    `_failures_explained` for what is said when it does not)."""

    async def run() -> T:
        # No webhook delivery from a command: its events wait in the outbox for a serving process.
        async with Keystile(settings, deliver_events=False) as keystile:
            await _require_current_schema(keystile.engine)
            async with keystile.session_factory() as session:
                return await work(keystile, session)

    _log_to_stderr(settings)
    with _failures_explained(settings):
        _refuse_missing_sqlite_file(settings)  # before Keystile(...), which would create keystile.secret here
        return asyncio.run(run())


@app.command()
def migrate() -> None:
    """Create the database schema or bring it up to date."""
    settings = _settings()
    with _failures_explained(settings):
        asyncio.run(_check_before_migrating(settings.database_url))
        migrations.upgrade(settings.database_url)
    typer.echo("database is up to date")


@app.command()
def doctor() -> None:
    """Check the settings, database, Redis, secret and file permissions; say what to fix (exit 1 if anything must)."""
    from keystile import doctor as checks  # here, not at the top: keystile.doctor reuses this module's helpers

    raise typer.Exit(checks.run())


# How `serve` runs uvicorn (bench/bench_http.py serves its app the same way).
SERVE_OPTIONS: dict[str, Any] = {
    "factory": True,
    "proxy_headers": False,  # X-Forwarded-For is believed only from KEYSTILE_TRUSTED_PROXIES, by keystile itself
    "server_header": False,
    "timeout_graceful_shutdown": 10,
    "access_log": False,  # keystile.access writes the line instead (duration, request id, api_key_id)
}


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (more than one needs KEYSTILE_REDIS_URL).")] = 1,
) -> None:
    """Migrate the database, then serve the API."""
    import uvicorn

    settings = _settings()
    if workers > 1 and not settings.redis_url:
        typer.echo(
            "warning: without KEYSTILE_REDIS_URL each worker keeps its own rate-limit counters and key cache;"
            " limits are then per worker and a revoke reaches other workers only when their cache entry expires",
            err=True,
        )
    settings.resolved_secret_key()  # create the embedded secret once, before workers race for it
    with _failures_explained(settings):
        asyncio.run(_check_before_migrating(settings.database_url))
        migrations.upgrade(settings.database_url)
    if settings.redis_url:
        _warn_if_redis_is_down(settings.redis_url, settings.rate_limit_failure)
    app_factory = "keystile.app:create_served_app"
    options = {"host": host, "port": port, "workers": workers, "log_level": settings.log_level, **SERVE_OPTIONS}
    options["log_config"] = uvicorn_log_config(settings.log_level, settings.log_format)
    with worker_directory(workers):  # where several workers meet to sum their /metrics
        if workers > 1 and sys.platform == "linux":
            _run_workers(uvicorn.Config(app_factory, **options))
        else:
            uvicorn.run(app_factory, **options)


def _run_workers(config: uvicorn.Config) -> None:
    """uvicorn's worker supervisor, each worker listening on a socket of its own.

    `uvicorn.run` binds one socket and hands it to every worker: one accept queue, emptied by whichever worker wakes
    first. A client that opens its connections together (a proxy's pool, a load generator) then lands on one worker
    while the others idle: two workers served no more than one in bench_http. Each worker's own SO_REUSEPORT
    socket has its own queue, and Linux spreads new connections across them by hash. This process keeps one more
    socket bound (never listening) so that the address stays ours while it serves.
    """
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    logger = logging.getLogger("uvicorn.error")
    try:
        held = _claim(config.host, config.port)
    except OSError as error:
        logger.error(error)  # as uvicorn.run reports an address in use
        sys.exit(STARTUP_FAILURE)
    logger.info("Uvicorn running on http://%s:%d (a socket per worker; press CTRL+C to quit)", config.host, config.port)
    try:
        Multiprocess(config, sockets=[held]).run()
    finally:
        held.close()


def _claim(host: str, port: int) -> _WorkerListener:
    """The address, bound for this run; OSError when anything else listens there. A plain bind comes first because
    SO_REUSEPORT alone would let a second `keystile serve` of the same user join the first and take half its traffic."""
    with socket.socket(_family(host)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: connections in TIME_WAIT are fine
        probe.bind((host, port))
    return _reuse_port_socket(host, port)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _WorkerListener(socket.socket):
    """Passed to each worker, where unpickling makes it a new socket bound to the same address (its own accept queue)
    instead of the copy of this one that multiprocessing would make."""

    def __reduce__(self) -> tuple[Any, ...]:
        host, port = self.getsockname()[:2]
        return _reuse_port_socket, (host, port)


def _reuse_port_socket(host: str, port: int) -> _WorkerListener:
    sock = _WorkerListener(_family(host))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _warn_if_redis_is_down(redis_url: str, failure_mode: str) -> None:
    """A warning, not a refusal: the server rides out a Redis outage (and Redis may simply start after it), so it
    serves, with the consequences said once at start-up."""
    problem = asyncio.run(_redis_problem(redis_url))
    if problem is not None:
        typer.echo(
            f"warning: Redis does not answer: {problem}\nserving anyway: rate limits fail {failure_mode}"
            " (KEYSTILE_RATE_LIMIT_FAILURE) and other instances see key changes only within the cache TTL;"
            f" {REDIS_ADVICE}",
            err=True,
        )


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="The user's email, their login name.")],
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an administrator.")] = False,
) -> None:
    """Create a user; the password comes from KEYSTILE_PASSWORD or a prompt."""
    settings = _settings()
    with _failures_explained(settings):
        _refuse_missing_sqlite_file(settings)  # before the prompt: nobody types a password twice for nothing
    password = os.environ.get("KEYSTILE_PASSWORD") or typer.prompt(
        "Password", hide_input=True, confirmation_prompt=True
    )
    try:
        account = UserCreate(email=email, password=password)  # the same rules as POST /auth/register
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors(include_input=False))
        typer.echo(f"invalid user: {problems}", err=True)
        raise typer.Exit(2) from None

    async def work(keystile: Keystile, session: AsyncSession) -> int:
        user = await users_service.create_user(
            session,
            email=account.email,
            password=account.password,
            passwords=keystile.passwords,
            is_admin=admin,
            now=keystile.clock(),
        )
        await session.commit()
        return user.id

    try:
        user_id = _run(settings, work)
    except users_service.EmailTakenError:
        typer.echo(f"a user with email {email} already exists", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"created user {user_id} ({email}){' as admin' if admin else ''}")


@keys_app.command("create")
def keys_create(
    email: Annotated[str, typer.Option(help="Owner of the new key.")],
    name: Annotated[str, typer.Option(help="A name for the key.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated scopes.")] = "",
    rate_limit: Annotated[str | None, typer.Option("--rate-limit", help="<requests>/<seconds>, e.g. 100/60.")] = None,
    expires_in: Annotated[int | None, typer.Option("--expires-in", help="Lifetime in seconds.")] = None,
) -> None:
    """Issue a key and print it once."""
    try:
        spec = KeyCreate(
            name=name,
            scopes=[scope.strip() for scope in scopes.split(",") if scope.strip()],
            expires_in=expires_in,
            rate_limit=RateLimitPolicy.parse(rate_limit) if rate_limit else None,
        )
    except ValueError as error:
        typer.echo(f"invalid key settings: {error}", err=True)
        raise typer.Exit(2) from None

    async def work(keystile: Keystile, session: AsyncSession) -> str | None:
        owner = await users_service.get_by_email(session, email)
        if owner is None:
            return None
        issued = await keystile.key_manager(session).create(owner_id=owner.id, spec=spec)
        return issued.raw

    raw = _run(_settings(), work)
    if raw is None:
        typer.echo(f"no user with email {email}", err=True)
        raise typer.Exit(1)
    typer.echo(raw)


@keys_app.command("list")
def keys_list(
    email: Annotated[str | None, typer.Option(help="Only this user's keys.")] = None,
    unused_for_days: Annotated[
        int | None,
        typer.Option(min=1, max=3650, help="Only keys not used for this many days (never used: since creation)."),
    ] = None,
) -> None:
    """List keys (never the keys themselves: id, hint, name, owner, state, last used)."""

    async def work(keystile: Keystile, session: AsyncSession) -> list[str] | None:
        owner_id = None
        if email is not None:
            owner = await users_service.get_by_email(session, email)
            if owner is None:
                return None
            owner_id = owner.id
        keys = keystile.key_manager(session)
        rows = await keys.list_page(owner_id=owner_id, limit=10_000, offset=0, unused_for_days=unused_for_days)
        return [
            f"{row.id}\t{row.hint}\t{row.name}\towner={row.user_id}\t{_state(row)}"
            f"\tlast_used={row.last_used_at.isoformat() if row.last_used_at else 'never'}"
            for row in rows
        ]

    lines = _run(_settings(), work)
    if lines is None:
        typer.echo(f"no user with email {email}", err=True)
        raise typer.Exit(1)
    for line in lines:
        typer.echo(line)


def _state(row: ApiKey) -> str:
    if not row.is_active:
        return "revoked"
    return "active" if row.enabled else "disabled"


@keys_app.command("revoke")
def keys_revoke(key_pk: Annotated[int, typer.Argument(metavar="ID", help="The key's integer id.")]) -> None:
    """Revoke a key; it never works again."""

    async def work(keystile: Keystile, session: AsyncSession) -> bool:
        keys = keystile.key_manager(session)
        try:
            row = await keys.get(key_pk, owner_id=None, for_update=True)
        except KeyNotFoundError:
            return False
        await keys.revoke(row, actor_id=row.user_id, ip=None)
        return True

    if not _run(_settings(), work):
        typer.echo(f"no key with id {key_pk}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked key {key_pk}")


@keys_app.command("verify")
def keys_verify(key: Annotated[str, typer.Argument(metavar="KEY", help="The raw key to check.")]) -> None:
    """Check a key: exit status 0 when it is valid, 1 when not."""

    async def work(keystile: Keystile, _session: AsyncSession) -> str:
        return (await keystile.verifier.verify(key)).outcome.value

    outcome = _run(_settings(), work)
    typer.echo(outcome)
    raise typer.Exit(0 if outcome == "VALID" else 1)


@webhooks_app.command("list")
def webhooks_list(email: Annotated[str | None, typer.Option(help="Only this user's webhooks.")] = None) -> None:
    """List webhook endpoints: id, owner, URL, events, enabled, deliveries pending and failed, the last attempt.

    Never the signing secret.
    """

    async def work(_keystile: Keystile, session: AsyncSession) -> list[overview.EndpointOverview]:
        owner_id = None
        if email is not None:
            owner = await users_service.get_by_email(session, email)
            if owner is None:
                raise CommandFailure(f"no user with email {email}", "`keystile webhooks list` shows every owner")
            owner_id = owner.id
        return await overview.overview(session, owner_id=owner_id)

    endpoints = _run(_settings(), work)
    typer.echo(overview.table(endpoints) if endpoints else "no webhooks")


@events_app.command("replay")
def events_replay(
    since: Annotated[
        str,
        typer.Option(help="Events from this time on: ISO 8601 (2025-01-31T12:00:00Z; UTC if no offset) or 24h/7d ago."),
    ],
    until: Annotated[str | None, typer.Option(help="Events before this time (same forms); default: now.")] = None,
    webhook: Annotated[
        int | None,
        typer.Option(metavar="ID", help="Only to this webhook endpoint; default: every enabled endpoint subscribed."),
    ] = None,
) -> None:
    """Send past events again, each with the same webhook-id (its event id) as before.

    Each becomes a new pending delivery, due now, its attempts and retries starting over.

    It goes to --webhook, or to every enabled endpoint of the event's owner subscribed to its type.

    Nothing is sent from here: a running `keystile serve` delivers them within a poll.

    Events older than KEYSTILE_EVENT_RETENTION_DAYS (30) have been pruned.
    """
    now = datetime.now(UTC)
    try:
        start = replay.moment(since, now=now)
        end = replay.moment(until, now=now) if until is not None else now
        if start >= end:
            raise ValueError("--since must be before --until (or before now)")
    except ValueError as error:
        typer.echo(f"invalid time: {error}", err=True)
        raise typer.Exit(1) from None

    async def work(keystile: Keystile, session: AsyncSession) -> replay.Replayed:
        endpoint = None
        if webhook is not None:
            endpoint = await session.get(WebhookEndpoint, webhook)
            if endpoint is None:
                raise CommandFailure(f"no webhook with id {webhook}", "`keystile webhooks list` shows the ids")
            if not endpoint.enabled:
                raise CommandFailure(
                    f"webhook {webhook} is disabled: nothing would be sent to it",
                    f'its owner can enable it (PATCH /webhooks/{webhook} {{"enabled": true}}), then replay',
                )
        return await replay.replay(session, since=start, until=end, now=keystile.clock(), endpoint=endpoint)

    queued = _run(_settings(), work)
    endpoints = "endpoint" if queued.endpoints == 1 else "endpoints"
    typer.echo(
        f"queued {queued.deliveries} deliveries of {queued.events} events to {queued.endpoints} {endpoints}"
        " (same webhook-id as before); a running `keystile serve` sends them"
    )
