"""`create_app(settings)`: the keystile service, built on the same public surface other apps use."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError

from keystile import __version__, data, ops
from keystile.audit import router as audit_router
from keystile.clock import Clock, system_clock
from keystile.errors import request_validation_error
from keystile.fastapi import limiter_unavailable
from keystile.keys import admin_router, verify_router
from keystile.keys import router as keys_router
from keystile.limits import BodySizeLimit
from keystile.logs import install_redaction
from keystile.ratelimit.guard import LimiterClosedError
from keystile.runtime import Keystile
from keystile.settings import Settings
from keystile.users import router as users_router

DESCRIPTION = """\
Self-hosted API keys: users log in with a JWT and issue named keys, shown once and stored only as a hash;
services present them in `X-API-Key`.
"""


def create_app(settings: Settings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    install_redaction()
    runtime = Keystile(settings if settings is not None else Settings(), clock=clock)
    app = FastAPI(title="keystile", version=__version__, description=DESCRIPTION, lifespan=runtime.lifespan)
    runtime.install(app)
    routers = (
        users_router.router,
        keys_router.router,
        verify_router.router,
        admin_router.router,
        data.router,
        audit_router.router,
        ops.router,
    )
    for router in routers:
        app.include_router(router)
    app.add_middleware(BodySizeLimit)
    app.add_exception_handler(LimiterClosedError, _limiter_closed)
    app.add_exception_handler(RequestValidationError, request_validation_error)
    return app


async def _limiter_closed(request: Request, exc: Exception) -> Response:
    """Any route that needs a limiter decision while Redis is down and RATE_LIMIT_FAILURE=closed."""
    return await http_exception_handler(request, limiter_unavailable())
