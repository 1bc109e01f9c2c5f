"""Lifeboat console widgets: wizard, main window, pages. Imports ``console`` only, never ``engine``."""
