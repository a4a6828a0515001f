"""Key usage (last_used_at, use_count) buffered in memory and written in batches, never once per request."""
