"""Every setting of events, webhooks and leaks is in the README's settings table and in docs/WEBHOOKS.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from keystile.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EVENT_SETTINGS = sorted(
    name.upper()
    for name in Settings.model_fields
    if name.startswith(("webhook_", "expiry_", "event_")) or name in ("leak_action", "github_scanning_keys")
)


def test_the_events_settings_are_found() -> None:
    assert {"WEBHOOK_ALLOW_PRIVATE", "EVENT_RETENTION_DAYS", "LEAK_ACTION", "GITHUB_SCANNING_KEYS"} <= set(
        EVENT_SETTINGS
    )


@pytest.mark.parametrize("document", ["README.md", "docs/WEBHOOKS.md"])
@pytest.mark.parametrize("name", EVENT_SETTINGS)
def test_each_events_setting_has_a_row_in_the_settings_table(document: str, name: str) -> None:
    rows = [line for line in (ROOT / document).read_text().splitlines() if line.startswith("| `")]
    assert any(f"`{name}`" in row.split(" | ")[0] for row in rows), f"{document} has no row for KEYSTILE_{name}"
