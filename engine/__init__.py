"""Lifeboat's replication engine. Imports no Qt, no ``console`` and no ``ui``."""

__version__ = "0.1.0"
