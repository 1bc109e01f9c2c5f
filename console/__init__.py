"""Lifeboat console: the Qt application layer between the engine and the widgets in ``ui``."""
