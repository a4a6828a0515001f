"""The audit log: who did what to which key or account, written in the same transaction as the change."""
