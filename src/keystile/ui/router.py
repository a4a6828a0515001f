"""The dashboard's routes under `/ui`, its static assets, its headers and its error pages, installed on an app."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from keystile.ui import admin_pages, audit_pages, auth_pages, identity_pages, key_pages, webhook_pages
from keystile.ui.headers import DashboardHeaders
from keystile.ui.pages import PageError, SignInRequired, page_error, sign_in_required

STATIC = Path(__file__).parent / "static"

router = APIRouter(prefix="/ui", include_in_schema=False)
for pages in (auth_pages, key_pages, identity_pages, webhook_pages, audit_pages, admin_pages):
    router.include_router(pages.router)


def install(app: FastAPI) -> None:
    """Pages at /ui/, assets at /ui/static/ (inside the package: no CDN, no build step), none of it in the OpenAPI
    document."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    app.add_middleware(DashboardHeaders)
    app.add_exception_handler(PageError, page_error)
    app.add_exception_handler(SignInRequired, sign_in_required)
