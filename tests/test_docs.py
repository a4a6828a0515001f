"""The OpenAPI pages load every asset from keystile itself, and KEYSTILE_DOCS_ENABLED=false hides them."""

from __future__ import annotations

import re

from tests.conftest import MakeClient
from tests.helpers import KeystileClient


async def test_swagger_ui_loads_its_script_and_style_from_keystile_and_both_are_served(client: KeystileClient) -> None:
    page = await client.get("/docs")

    assert page.status_code == 200
    sources = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert sources, page.text
    assert all(source.startswith("/") and not source.startswith("//") for source in sources), sources
    assert "cdn" not in page.text.lower()
    for source in sources:
        asset = await client.get(source)
        assert asset.status_code == 200, source
        assert len(asset.content) > 100, source
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "keystile"


async def test_redoc_is_not_served_since_its_assets_would_come_from_a_cdn(client: KeystileClient) -> None:
    assert (await client.get("/redoc")).status_code == 404


async def test_docs_disabled_hides_the_pages_and_the_schema(make_client: MakeClient) -> None:
    client = await make_client(docs_enabled=False)

    for path in ("/docs", "/openapi.json", "/docs/assets/swagger-ui.css"):
        assert (await client.get(path)).status_code == 404, path
    assert (await client.get("/healthz")).status_code == 200
