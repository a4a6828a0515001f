"""The README's "Use it from..." snippets are the files the suite runs, shown as they are."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    "path",
    ["examples/fastapi_app.py", "examples/starlette_app.py", "examples/client_verify.py", "docs/gateways/Caddyfile"],
)
def test_the_readme_shows_the_tested_file_verbatim(path: str) -> None:
    assert (ROOT / path).read_text() in README
