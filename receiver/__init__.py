"""receiver: filled by a later issue (see README)."""
