"""Key usage: counted in memory per verification, written in batches (use_count, last_used_at and hourly history by
outcome, per key and per identity), and read back as zero-filled hours or days (docs/DESIGN.md, "Usage history")."""
