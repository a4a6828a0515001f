"""keystile: self-hostable API keys for machine-to-machine APIs, as a service and a FastAPI library.

`Keystile`, `Settings` and `create_app` are imported on first use, so `import keystile` (for its version, say) and
`import keystile.client` stay light: neither loads SQLAlchemy or FastAPI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keystile.app import create_app
    from keystile.instance import Keystile
    from keystile.settings import Settings

__version__ = "0.1.0"

__all__ = ["Keystile", "Settings", "__version__", "create_app"]

_LAZY = {"Keystile": "keystile.instance", "Settings": "keystile.settings", "create_app": "keystile.app"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keystile' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
