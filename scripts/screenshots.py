"""Screenshots of the dashboard's main pages into docs/screenshots/, with the same browser the tests use.

    .venv/bin/python scripts/screenshots.py [--chromium /usr/bin/chromium]

Starts `keystile serve` on a free port with a throwaway SQLite database, registers a user, creates a few keys (and
some usage), then photographs the pages (keys, a key, an identity, ...) at a laptop's and a phone's size. Needs
Playwright (the `test` extra) and Chromium; it never downloads a browser.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, ViewportSize, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
KEYSTILE = Path(sys.executable).with_name("keystile")
EMAIL = "demo@example.com"
ADMIN_EMAIL = "admin@example.com"
PASSWORD = "correct horse battery staple"  # noqa: S105  (a throwaway account in a throwaway database)
LAPTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
READY_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def demo_env(workdir: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("KEYSTILE_")}
    env["KEYSTILE_DATABASE_URL"] = f"sqlite+aiosqlite:///{workdir / 'demo.db'}"
    return env


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = demo_env(workdir)
    process = subprocess.Popen(  # noqa: S603  (our own keystile executable, fixed arguments)
        [str(KEYSTILE), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)  # polling a child process's start, bounded by the deadline
    process.terminate()
    raise SystemExit("keystile serve did not start")


def seed(url: str, workdir: Path) -> None:
    """A user with an identity and a few keys, two used (one of them the identity's), one disabled, one revoked; and
    an administrator, made as the README says the first one is (`keystile users create --admin`)."""
    subprocess.run(  # noqa: S603  (our own keystile executable, fixed arguments)
        [str(KEYSTILE), "users", "create", "--email", ADMIN_EMAIL, "--admin"],
        cwd=workdir,
        env=demo_env(workdir) | {"KEYSTILE_PASSWORD": PASSWORD},
        check=True,
        capture_output=True,
    )
    with httpx.Client(base_url=url, timeout=10) as http:
        http.post("/auth/register", json={"email": EMAIL, "password": PASSWORD}).raise_for_status()
        token = http.post("/auth/token", data={"username": EMAIL, "password": PASSWORD}).json()["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}
        identity = http.post("/identities", json={"external_id": "acme-corp", "quota": 10000}, headers=bearer)
        identity.raise_for_status()
        specs = [
            {"name": "billing-service", "scopes": ["read:data", "write:data"], "quota": 5000},
            {"name": "acme-production", "scopes": ["read:data"], "identity_id": identity.json()["id"]},
            {"name": "analytics-export", "scopes": ["read:data"], "rate_limit": {"limit": 100, "window_seconds": 60}},
            {"name": "staging", "scopes": []},
            {"name": "old-integration", "scopes": ["read:data"]},
        ]
        created = [http.post("/keys/", json=spec, headers=bearer).json() for spec in specs]
        for _ in range(25):
            http.get("/data/export", headers={"X-API-Key": created[0]["key"]})
        for _ in range(12):
            http.get("/data/export", headers={"X-API-Key": created[1]["key"]})
        http.patch(f"/keys/{created[3]['id']}", json={"enabled": False}, headers=bearer)
        http.post(f"/keys/{created[4]['id']}/revoke", headers=bearer)


def sign_in(page: Page, email: str = EMAIL) -> None:
    page.goto("/ui/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Keys").wait_for()


def shoot(page: Page, name: str) -> None:
    page.screenshot(path=OUT / f"{name}.png", full_page=True)
    print(f"wrote {(OUT / f'{name}.png').relative_to(ROOT)}")


def photograph(url: str, chromium: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            laptop = browser.new_context(base_url=url, viewport=LAPTOP).new_page()
            laptop.goto("/ui/login")
            shoot(laptop, "login")
            sign_in(laptop)
            shoot(laptop, "keys")
            laptop.get_by_role("link", name="billing-service").click()
            shoot(laptop, "key")
            laptop.get_by_role("link", name="Keys", exact=True).click()
            laptop.get_by_role("link", name="Create key").click()
            shoot(laptop, "create-key")
            laptop.get_by_label("Name").fill("new-service")
            laptop.get_by_role("button", name="Create key").click()
            # A stand-in for the raw key, so no key-shaped string (which secret scanners flag) is committed.
            laptop.get_by_label("New API key").evaluate("field => { field.value = 'ks_…shown once, here only…' }")
            shoot(laptop, "reveal")
            laptop.goto("/ui/audit")
            shoot(laptop, "audit")
            laptop.get_by_role("link", name="Identities").click()
            laptop.get_by_role("link", name="acme-corp").click()
            shoot(laptop, "identity")
            admin = browser.new_context(base_url=url, viewport=LAPTOP).new_page()
            sign_in(admin, ADMIN_EMAIL)
            admin.goto("/ui/admin/users")
            shoot(admin, "admin-users")
            admin.goto("/ui/admin/keys")
            shoot(admin, "admin-keys")
            phone = browser.new_context(base_url=url, viewport=PHONE, is_mobile=True).new_page()
            sign_in(phone)
            shoot(phone, "keys-phone")
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable to drive")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        process, url = start_server(Path(workdir))
        try:
            seed(url, Path(workdir))
            photograph(url, args.chromium)
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
