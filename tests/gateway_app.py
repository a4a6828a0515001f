"""The served app for tests that put a real gateway in front of a real server (test_gateways.py).

`uvicorn tests.gateway_app:create --factory`: `create_served_app()` exactly as `keystile serve` runs it.
"""

from __future__ import annotations

from keystile.app import create_served_app

create = create_served_app
