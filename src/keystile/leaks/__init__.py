"""Leak intake: reported raw keys are classified, audited, revoked (or only reported) and announced."""
