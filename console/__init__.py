"""Lifeboat console: the Qt application layer (planned: issue 5)."""
