"""``python -m uow``: the command line (see :mod:`uow._ops.cli`)."""

import sys

from ._ops.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
