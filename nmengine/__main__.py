"""``python -m nmengine ...`` runs the same command line as the ``nmengine`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
