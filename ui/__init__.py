"""Lifeboat UI widgets (planned: issue 5)."""
