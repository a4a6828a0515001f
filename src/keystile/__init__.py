"""keystile: self-hostable API keys for machine-to-machine APIs, as a service and a FastAPI library."""

from keystile.settings import Settings

__version__ = "0.1.0"

__all__ = ["Settings", "__version__"]
