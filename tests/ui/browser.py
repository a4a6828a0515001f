"""A real Chromium (the system's /usr/bin/chromium, driven by Playwright) against a real `keystile serve`.

Locally the browser tests skip when Chromium is not installed; under CI=true they fail instead (.ci/run installs it).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import PASSWORD
from tests.process import KEYSTILE

CHROMIUM = Path("/usr/bin/chromium")


def require_chromium() -> None:
    if not CHROMIUM.exists():
        backends.unavailable("Chromium (apt-get install chromium)", FileNotFoundError(str(CHROMIUM)))


def new_email(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}@example.com"


def register(base_url: str, email: str) -> None:
    response = httpx.post(f"{base_url}/auth/register", json={"email": email, "password": PASSWORD}, timeout=10)
    assert response.status_code == 201, response.text


def create_admin(env: dict[str, str], email: str, cwd: Path) -> None:
    """`keystile users create --admin`, the way an operator makes the first admin."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}
    result = subprocess.run(
        [str(KEYSTILE), "users", "create", "--email", email, "--admin"],
        env=inherited | env | {"KEYSTILE_PASSWORD": PASSWORD},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def server_env(database_url: str) -> dict[str, str]:
    return {"KEYSTILE_DATABASE_URL": database_url, "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY}


@pytest.fixture(scope="module")
def chromium_path() -> Path:
    require_chromium()
    return CHROMIUM
