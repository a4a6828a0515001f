"""`create_app(settings)`: the keystile service, built on the same public surface other apps use."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.routing import APIRoute
from starlette.types import Lifespan

from keystile import __version__, data, forward_auth, ops
from keystile.audit import router as audit_router
from keystile.docs import install_docs
from keystile.errors import install_error_handlers
from keystile.fastapi import limiter_unavailable
from keystile.identities import router as identities_router
from keystile.instance import Keystile
from keystile.keys import admin_router, verify_router
from keystile.keys import router as keys_router
from keystile.leaks import router as leaks_router
from keystile.limits import RequestLimits
from keystile.logs import install_redaction
from keystile.metrics import WORKER_METRICS_DIR, Metrics
from keystile.ratelimit.guard import LimiterClosedError
from keystile.request_id import RequestContext
from keystile.settings import Settings
from keystile.ui import router as dashboard
from keystile.usage import router as usage_router
from keystile.users import router as users_router
from keystile.webhooks import router as webhooks_router

DESCRIPTION = """\
Self-hosted API keys: users log in with a JWT and issue named keys, shown once and stored only as a hash;
services present them in `X-API-Key`.
"""


DOCUMENTED_TAGS = (
    "users",
    "keys",
    "identities",
    "verify",
    "admin",
    "gateways",
    "data",
    "audit",
    "webhooks",
    "leaks",
    "usage",
    "operations",
)


def create_app(settings: Settings | None = None, **options: Any) -> FastAPI:
    """The service app. Its lifespan runs `Keystile(settings, **options)`: options are `Keystile`'s keyword arguments
    (`clock`, `monotonic`, `passwords`, `usage_flush_seconds`; see `keystile.instance`)."""
    install_redaction()
    keystile = Keystile(settings, **options)
    docs = keystile.settings.docs_enabled
    app = FastAPI(
        title="keystile",
        version=__version__,
        description=DESCRIPTION,
        lifespan=keystile.lifespan,
        docs_url=None,  # served by keystile.docs, with local assets
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        # The document's sections in the API's order, whatever order the routes are matched in (below).
        openapi_tags=[{"name": name} for name in DOCUMENTED_TAGS],
    )
    keystile.install(app)
    # First the routes a gateway or a protected call takes on every request: a request is matched against the routes
    # in order (docs/PERFORMANCE.md, "Routing"). The rest keep the order the API documents them in.
    routers = (
        verify_router.router,
        forward_auth.router,
        data.router,
        users_router.router,
        keys_router.router,
        identities_router.router,
        admin_router.router,
        audit_router.router,
        webhooks_router.router,
        leaks_router.router,
        usage_router.router,
        ops.router,
    )
    for router in routers:
        _include_flat(app, router)
    if docs:
        install_docs(app)
    dashboard.install(app)  # /ui/: pages for people, not in the OpenAPI document
    app.add_middleware(RequestLimits)
    app.add_middleware(RequestContext)  # outermost: refused requests get a request id and an access line too
    app.add_exception_handler(LimiterClosedError, _limiter_closed)
    install_error_handlers(app)
    return app


def _include_flat(app: FastAPI, router: APIRouter) -> None:
    """`app.include_router(router)` as FastAPI did it before 0.137: the router's routes go into the app's own table.

    Since 0.137 `include_router` keeps the router as one node that is resolved on every request, with scope
    bookkeeping around each route it tries; for `/data/export` that cost a fifth of the request (docs/PERFORMANCE.md,
    "Routing"). keystile's routers declare their prefix themselves and are included with no options, so each route
    already is what including it would make of it.
    """
    for route in router.routes:
        if not isinstance(route, APIRoute):  # a nested router would need FastAPI's own inclusion
            raise TypeError(f"{route!r} in {router.prefix or '/'} is not a plain route")
        app.router.routes.append(route)


def create_served_app() -> FastAPI:
    """The app as `keystile serve` runs it in each worker process: `create_app()` from KEYSTILE_* settings, and once
    it has started, everything alive (modules, routes, models, pools) moved out of the garbage collector's reach.

    Those objects live as long as the process, yet every full collection walked all of them (~150k) and stalled each
    request in flight for tens of milliseconds: with Redis limits, where requests wait across loop turns and their
    objects reach the oldest generation, this is most of the p99 (docs/PERFORMANCE.md). Only the served
    process does this: an app that embeds keystile tunes its own process's collector.
    """
    app = create_app()
    lifespan = app.router.lifespan_context
    directory = os.environ.get(WORKER_METRICS_DIR)
    if directory:  # one of several workers: /metrics answers the totals over all of them
        lifespan = _with_metrics_shared(lifespan, app.state.keystile.metrics, Path(directory))
    app.router.lifespan_context = _with_startup_frozen(lifespan)
    return app


def _with_metrics_shared(lifespan: Lifespan[Any], metrics: Metrics, directory: Path) -> Lifespan[Any]:
    @contextlib.asynccontextmanager
    async def shared(app: Any) -> AsyncIterator[Any]:
        async with lifespan(app) as state, metrics.shared(directory):
            yield state

    return shared


def _with_startup_frozen(lifespan: Lifespan[Any]) -> Lifespan[Any]:
    @contextlib.asynccontextmanager
    async def frozen(app: Any) -> AsyncIterator[Any]:
        async with lifespan(app) as state:
            gc.collect()
            gc.freeze()
            try:
                yield state
            finally:
                gc.unfreeze()  # collectable again should anything go on running in this process

    return frozen


async def _limiter_closed(request: Request, exc: Exception) -> Response:
    """Any route that needs a limiter decision while Redis is down and RATE_LIMIT_FAILURE=closed."""
    return await http_exception_handler(request, limiter_unavailable())
