"""PyInstaller entry script of ``lifeboat-console``: the same ``console.app:main`` as the gui-scripts entry point."""

import sys

if __name__ == "__main__":
    from console.app import main

    sys.exit(main())
