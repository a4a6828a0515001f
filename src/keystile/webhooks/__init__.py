"""Webhook endpoints: a user's receivers of events (API.md section 9), their secrets and the SSRF guard."""
