"""The README's curl session, and what a real `keystile serve` does with hostile or leaky requests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from keystile.keys.format import secret_scanner_regex
from keystile.logs import REDACTED
from tests import backends
from tests.conftest import TEST_SECRET_KEY
from tests.helpers import PASSWORD
from tests.process import KeystileServer

pytestmark = pytest.mark.process

README = Path(__file__).parents[1] / "README.md"
SESSION_HEADING = "## The lesson's session, with curl"
README_ADDRESS = "localhost:8000"
KEY_PATTERN = re.compile(secret_scanner_regex())


def readme_session() -> str:
    """The first bash block after the session heading in the README, as a reader would paste it."""
    text = README.read_text()
    assert SESSION_HEADING in text, f"README has no section {SESSION_HEADING!r}"
    match = re.search(r"```bash\n(.*?)```", text.split(SESSION_HEADING, 1)[1], re.DOTALL)
    assert match is not None, "the README's session section has no bash block"
    return match.group(1)


def require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        message = f"the README session needs {', '.join(missing)}"
        if backends.IN_CI:
            pytest.fail(f"{message} (CI requires it)", pytrace=False)
        pytest.skip(message)


def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {"KEYSTILE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'keystile.db'}"}


def postgres_env(tmp_path: Path) -> dict[str, str]:
    url = backends.fresh_postgres_database(f"{backends.POSTGRES_DATABASE}_serve")
    return {"KEYSTILE_DATABASE_URL": url, "KEYSTILE_SECRET_KEY": TEST_SECRET_KEY}


def issue_key(base_url: str) -> str:
    """Register, log in and create a key over HTTP; the raw key."""
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        registered = http.post("/auth/register", json={"email": "bob@example.com", "password": PASSWORD})
        assert registered.status_code == 201, registered.text
        token = http.post("/auth/token", data={"username": "bob@example.com", "password": PASSWORD})
        assert token.status_code == 200, token.text
        created = http.post(
            "/keys/", params={"name": "query"}, headers={"Authorization": f"Bearer {token.json()['access_token']}"}
        )
        assert created.status_code == 201, created.text
        return str(created.json()["key"])


@pytest.mark.parametrize(
    "make_env",
    [pytest.param(sqlite_env, id="sqlite"), pytest.param(postgres_env, id="postgres", marks=pytest.mark.postgres)],
)
def test_the_readme_curl_session_issues_a_key_that_exports_data_and_an_invalid_key_gets_401(
    tmp_path: Path, make_env: Callable[[Path], dict[str, str]]
) -> None:
    require_tools("bash", "curl", "jq")
    env = make_env(tmp_path)
    with KeystileServer(env, cwd=tmp_path) as server:
        script = readme_session().replace(README_ADDRESS, f"localhost:{server.port}")
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{server.log}"
    lines = result.stdout.splitlines()
    assert json.loads(lines[0])["email"] == "alice@example.com"
    key_line = next(line for line in lines if line.startswith("API Key: "))
    assert KEY_PATTERN.fullmatch(key_line.removeprefix("API Key: ")), key_line
    assert json.loads(lines[lines.index(key_line) + 1]) == {"owner": 1, "data": []}
    assert json.loads(lines[-2]) == {"detail": "Invalid or expired API key"}
    assert lines[-1] == "HTTP 401"


def test_a_one_megabyte_api_key_header_gets_a_4xx_and_the_server_goes_on_serving(tmp_path: Path) -> None:
    with KeystileServer(sqlite_env(tmp_path), cwd=tmp_path) as server:
        try:
            response = httpx.get(f"{server.url}/data/export", headers={"X-API-Key": "k" * 1_000_000}, timeout=30.0)
        except httpx.RemoteProtocolError:
            response = None  # a server may also close the connection on an oversized header block: no crash either
        assert response is None or 400 <= response.status_code < 500, response.text if response else None
        assert server.is_healthy()
        assert server.returncode is None
    assert "Traceback" not in server.log


def test_a_query_parameter_key_works_when_enabled_and_the_access_log_shows_it_redacted(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path) | {"KEYSTILE_ACCEPT_QUERY_KEY": "true", "KEYSTILE_LOG_LEVEL": "info"}
    with KeystileServer(env, cwd=tmp_path) as server:
        raw_key = issue_key(server.url)
        response = httpx.get(f"{server.url}/data/export", params={"api_key": raw_key}, timeout=10.0)
        assert response.status_code == 200, response.text
        assert response.json() == {"owner": 1, "data": []}
    log = server.log
    assert f"/data/export?api_key={REDACTED}" in log
    assert raw_key not in log
    assert raw_key.rsplit("_", 1)[1][:-4] not in log  # not even the secret without the hint's last 4 characters
