"""Qt test support (qasync loop for async tests, blocking-call and leaked-widget guards, screenshots): qt_support."""

from tests.console.qt_support import *  # noqa: F401,F403  (fixtures and hooks, listed in its __all__)
