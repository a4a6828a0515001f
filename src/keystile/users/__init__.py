"""Users: registration, password login, JWT access tokens."""
