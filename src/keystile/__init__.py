"""keystile: self-hostable API keys for machine-to-machine APIs, as a service and a FastAPI library.

`Keystile` and `create_app` are imported on first use, so `import keystile` (for its version, say) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keystile.settings import Settings

if TYPE_CHECKING:
    from keystile.app import create_app
    from keystile.instance import Keystile

__version__ = "0.1.0"

__all__ = ["Keystile", "Settings", "__version__", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "Keystile":
        from keystile.instance import Keystile

        return Keystile
    if name == "create_app":
        from keystile.app import create_app

        return create_app
    raise AttributeError(f"module 'keystile' has no attribute {name!r}")
