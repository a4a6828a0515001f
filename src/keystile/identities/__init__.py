"""Identities: a customer of the API, whose rate limit and quota all its keys share (API.md section 8)."""
