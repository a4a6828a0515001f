"""Fixed-window rate limiting behind one interface, in the process or in Redis. See docs/RATE_LIMITS.md."""
