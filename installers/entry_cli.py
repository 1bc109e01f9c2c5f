"""PyInstaller entry script of ``lifeboat``: the same ``engine.cli:main`` as the console-scripts entry point.

``LIFEBOAT_BUNDLE_CHECK=1 lifeboat`` runs the bundle's self-check (installers/bundle_check.py) instead. It lives in
this console-subsystem executable, not in the windowed ``lifeboat-console``, so that its report is readable on
Windows too; both executables share one bundle, so it checks what the console runs on as well.
"""

import os
import sys

if __name__ == "__main__":
    if os.environ.get("LIFEBOAT_BUNDLE_CHECK") == "1":
        from bundle_check import main as check

        sys.exit(check())
    from engine.cli import main

    sys.exit(main())
