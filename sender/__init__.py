"""sender: filled by a later issue (see README)."""
