"""`create_served_app`, what `keystile serve` runs: the service app from KEYSTILE_* settings, with the objects alive at
startup kept out of full garbage collections while it serves (docs/PERFORMANCE.md, p99 with Redis limits)."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import httpx
import pytest

from keystile.app import create_served_app
from tests.conftest import TEST_SECRET_KEY


@pytest.fixture
def served_settings(sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KEYSTILE_* settings in the environment, as `keystile serve` passes them to its workers."""
    database = tmp_path / "keystile.db"
    shutil.copyfile(sqlite_template, database)
    monkeypatch.setenv("KEYSTILE_DATABASE_URL", f"sqlite+aiosqlite:///{database}")
    monkeypatch.setenv("KEYSTILE_SECRET_KEY", TEST_SECRET_KEY)


@pytest.mark.usefixtures("served_settings")
async def test_served_app_freezes_startup_objects_while_serving_and_releases_them_at_shutdown() -> None:
    app = create_served_app()
    assert gc.get_freeze_count() == 0

    async with app.router.lifespan_context(app):
        frozen_while_serving = gc.get_freeze_count()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
            response = await client.get("/readyz")

    assert response.status_code == 200
    assert frozen_while_serving > 10_000  # the app, its routes and models, the imported modules
    assert gc.get_freeze_count() == 0
