"""The `keystile` command line (README, "Command line"). Commands read the same KEYSTILE_* settings as the server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from keystile import migrations
from keystile.instance import Keystile
from keystile.keys.schemas import KeyCreate
from keystile.keys.service import KeyNotFoundError
from keystile.ratelimit.policy import RateLimitPolicy
from keystile.settings import Settings
from keystile.users import service as users_service
from keystile.users.schemas import UserCreate

app = typer.Typer(help="keystile: self-hosted API keys.", no_args_is_help=True, add_completion=False)
users_app = typer.Typer(help="Manage users.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as error:
        typer.echo(f"invalid settings: {error}", err=True)
        raise typer.Exit(2) from None


def _run(work: Callable[[Keystile, AsyncSession], Awaitable[T]]) -> T:
    """Run `work` with a session inside a started instance, which is stopped as the server stops it: usage written,
    quota leases returned, connections closed."""

    async def run() -> T:
        async with Keystile(_settings()) as keystile, keystile.session_factory() as session:
            return await work(keystile, session)

    return asyncio.run(run())


@app.command()
def migrate() -> None:
    """Create the database schema or bring it up to date."""
    migrations.upgrade(_settings().database_url)
    typer.echo("database is up to date")


# How `serve` runs uvicorn (bench/bench_http.py serves its app the same way).
SERVE_OPTIONS: dict[str, Any] = {
    "factory": True,
    "proxy_headers": False,  # X-Forwarded-For is believed only from KEYSTILE_TRUSTED_PROXIES, by keystile itself
    "server_header": False,
    "timeout_graceful_shutdown": 10,
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
    migrations.upgrade(settings.database_url)
    app_factory = "keystile.app:create_served_app"
    uvicorn.run(app_factory, host=host, port=port, workers=workers, log_level=settings.log_level, **SERVE_OPTIONS)


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="The user's email, their login name.")],
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an administrator.")] = False,
) -> None:
    """Create a user; the password comes from KEYSTILE_PASSWORD or a prompt."""
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
        user_id = _run(work)
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

    raw = _run(work)
    if raw is None:
        typer.echo(f"no user with email {email}", err=True)
        raise typer.Exit(1)
    typer.echo(raw)


@keys_app.command("list")
def keys_list(email: Annotated[str | None, typer.Option(help="Only this user's keys.")] = None) -> None:
    """List keys (never the keys themselves: id, hint, name, owner, state)."""

    async def work(keystile: Keystile, session: AsyncSession) -> list[str] | None:
        owner_id = None
        if email is not None:
            owner = await users_service.get_by_email(session, email)
            if owner is None:
                return None
            owner_id = owner.id
        rows = await keystile.key_manager(session).list_page(owner_id=owner_id, limit=10_000, offset=0)
        return [
            f"{row.id}\t{row.hint}\t{row.name}\towner={row.user_id}\t{'active' if row.is_active else 'revoked'}"
            for row in rows
        ]

    lines = _run(work)
    if lines is None:
        typer.echo(f"no user with email {email}", err=True)
        raise typer.Exit(1)
    for line in lines:
        typer.echo(line)


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

    if not _run(work):
        typer.echo(f"no key with id {key_pk}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked key {key_pk}")


@keys_app.command("verify")
def keys_verify(key: Annotated[str, typer.Argument(metavar="KEY", help="The raw key to check.")]) -> None:
    """Check a key: exit status 0 when it is valid, 1 when not."""

    async def work(keystile: Keystile, _session: AsyncSession) -> str:
        return (await keystile.verifier.verify(key)).outcome.value

    outcome = _run(work)
    typer.echo(outcome)
    raise typer.Exit(0 if outcome == "VALID" else 1)
