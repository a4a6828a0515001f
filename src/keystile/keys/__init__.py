"""API keys: format, storage, lifecycle and verification."""
