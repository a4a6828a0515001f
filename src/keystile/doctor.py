"""`keystile doctor`: check a deployment's settings and the services it needs, and say what to fix.

One line per check, `ok`, `warn` or `fail`, then what was found and what to do. Exit status 1 when any check fails
(something must be fixed before serving), else 0; warnings are judgement calls the operator may accept.

The doctor reads settings as every command does, and changes nothing: it never creates the SQLite file or the secret
beside it (as `serve` would), never migrates, and never prints a secret or a URL's password (URLs are shown as
SQLAlchemy renders them with the password masked; errors are the drivers' first lines, which name host and port only).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import stat
from pathlib import Path
from typing import Literal, NamedTuple

import typer
from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from keystile import __version__, migrations
from keystile.cli import REDIS_ADVICE, RUN_MIGRATE, _database_advice, _reason, _redis_problem, _shown, _sqlite_file
from keystile.db import create_engine
from keystile.migrations import SchemaState
from keystile.settings import MIN_SECRET_KEY_BYTES, Settings, _secret_path_for

# A guessable secret lets anyone sign admin JWTs. Length alone is checked by Settings; this also catches placeholders
# such as "changeme" repeated: length x log2(distinct characters) bounds the entropy from above, and a random token
# of 32 bytes or more is far beyond it.
MIN_SECRET_BITS = 128
HOW_TO_GENERATE = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
REPLACING_IT = "replacing it invalidates every issued key and token (docs/DEPLOYMENT.md, 'The secret key')"


class Check(NamedTuple):
    status: Literal["ok", "warn", "fail"]
    name: str
    message: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.message}"


def run() -> int:
    """Print one line per check; the exit status (1 when any check fails)."""
    checks = diagnose()
    for check in checks:
        typer.echo(check.line())
    return 1 if any(check.status == "fail" for check in checks) else 0


def diagnose() -> list[Check]:
    try:
        settings = Settings()
        make_url(settings.database_url)
    except ValidationError as error:
        problems = "; ".join(
            f"KEYSTILE_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors(include_input=False)
        )
        return [Check("fail", "settings", problems)]
    except ArgumentError:  # its message quotes the URL, password included
        return [Check("fail", "settings", "KEYSTILE_DATABASE_URL is not a database URL (see README, 'Settings')")]
    return [
        *_secret_checks(settings),
        asyncio.run(_database_check(settings)),
        *_database_file_checks(settings),
        asyncio.run(_redis_check(settings)),
        _proxies_check(settings),
    ]


def _secret_checks(settings: Settings) -> list[Check]:
    if settings.secret_key is not None:
        return [_strength("KEYSTILE_SECRET_KEY", settings.secret_key.get_secret_value())]
    if not settings.is_embedded:
        advice = f"set it to a random value of at least {MIN_SECRET_KEY_BYTES} bytes: {HOW_TO_GENERATE}"
        return [Check("fail", "secret key", f"KEYSTILE_SECRET_KEY is required unless the database is SQLite; {advice}")]
    path = _secret_path_for(settings.database_url)
    if not path.exists():
        message = (
            f"{path} does not exist yet: `keystile serve` creates it. If keys were issued before, they were hashed"
            " with the lost one: restore it from a backup"
        )
        return [Check("warn", "secret key", message)]
    try:
        secret = path.read_text().strip()
    except OSError as error:
        return [Check("fail", "secret key", f"cannot read {path}: {error.strerror}; run as keystile's user")]
    return [_strength(str(path), secret), _private_files("secret file", [path])]


def _strength(source: str, secret: str) -> Check:
    size = len(secret.encode())
    if size < MIN_SECRET_KEY_BYTES:
        message = f"{source} holds {size} bytes, fewer than {MIN_SECRET_KEY_BYTES}; {REPLACING_IT}"
        return Check("fail", "secret key", f"{message}; a new one: {HOW_TO_GENERATE}")
    if len(secret) * math.log2(max(len(set(secret)), 1)) < MIN_SECRET_BITS:
        message = f"{source} has only {len(set(secret))} different characters: it may be guessable; {REPLACING_IT}"
        return Check("warn", "secret key", f"{message}; a new one: {HOW_TO_GENERATE}")
    return Check("ok", "secret key", f"{source} holds {size} bytes")


def _private_files(name: str, paths: list[Path]) -> Check:
    """Files only their owner may read: the secret, and the database of key and password hashes."""
    shared = [path for path in paths if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077]
    if shared:
        modes = ", ".join(f"{path} is mode {stat.S_IMODE(path.stat().st_mode):04o}" for path in shared)
        chmod = " ".join(str(path) for path in shared)
        return Check("fail", name, f"{modes}: readable by others; run `chmod 600 {chmod}`")
    return Check("ok", name, f"{paths[0]} is mode {stat.S_IMODE(paths[0].stat().st_mode):04o}, private to its owner")


async def _database_check(settings: Settings) -> Check:
    url = make_url(settings.database_url)
    path = _sqlite_file(settings.database_url)
    if path is not None and not path.exists():  # connecting would create an empty file
        return Check("fail", "database", f"there is no keystile database at {path.resolve()}: {RUN_MIGRATE}")
    try:
        engine = create_engine(settings.database_url)
    except (ArgumentError, ImportError):
        problem = f"KEYSTILE_DATABASE_URL names a driver keystile cannot load ({url.drivername})"
        return Check("fail", "database", problem)
    try:
        async with engine.connect() as connection:
            state = await connection.run_sync(migrations.schema_state)
    except (OSError, DBAPIError) as error:
        return Check("fail", "database", f"cannot connect to {_shown(url)}: {_reason(error)}; {_database_advice(url)}")
    finally:
        await engine.dispose()
    problems = {
        SchemaState.MISSING: f"has no keystile schema: {RUN_MIGRATE}",
        SchemaState.BEHIND: f"has an older keystile schema: {RUN_MIGRATE}",
        SchemaState.UNKNOWN: f"was migrated by a newer keystile than this one ({__version__}): use that one or newer",
    }
    if state in problems:
        return Check("fail", "database", f"{_shown(url)} {problems[state]}")
    return Check("ok", "database", f"{_shown(url)} answers; schema is current")


def _database_file_checks(settings: Settings) -> list[Check]:
    path = _sqlite_file(settings.database_url)
    if path is None or not path.exists():
        return []
    path = path.resolve()
    return [_private_files("database file", [path, Path(f"{path}-wal"), Path(f"{path}-shm")])]


async def _redis_check(settings: Settings) -> Check:
    if not settings.redis_url:
        message = "not set: rate limits and the key cache live in each process; set KEYSTILE_REDIS_URL before serving"
        return Check("ok", "redis", f"{message} from more than one process")
    try:
        shown = _shown(make_url(settings.redis_url))
    except ArgumentError:  # its message quotes the URL, password included
        shown = "KEYSTILE_REDIS_URL"
    try:
        problem = await _redis_problem(settings.redis_url)
    except ValueError as error:  # not a redis://, rediss:// or unix:// URL; the message does not quote it
        return Check("fail", "redis", f"KEYSTILE_REDIS_URL: {error}")
    if problem is not None:
        return Check("fail", "redis", f"{shown} does not answer: {problem}; {REDIS_ADVICE}")
    return Check("ok", "redis", f"{shown} answers")


def _proxies_check(settings: Settings) -> Check:
    if not settings.trusted_proxies:
        message = "not set: the client address is the connection's peer; behind a load balancer, list its addresses"
        return Check("ok", "trusted proxies", message)
    anyone = [cidr for cidr in settings.trusted_proxies if ipaddress.ip_network(cidr, strict=False).prefixlen == 0]
    if anyone:
        message = (
            f"{', '.join(anyone)} believes anyone's X-Forwarded-For: any client can choose its address, so IP"
            " allowlists and per-address limits mean nothing; list only your load balancers' addresses"
        )
        return Check("warn", "trusted proxies", message)
    return Check("ok", "trusted proxies", f"X-Forwarded-For believed from {', '.join(settings.trusted_proxies)}")
