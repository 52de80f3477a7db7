"""``python -m hybridflow``: the ``hybridflow`` command line (see :mod:`hybridflow.cli.main`)."""

import sys

from hybridflow.cli.main import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
