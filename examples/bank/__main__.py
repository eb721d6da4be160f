"""``python -m examples.bank``: the bank's command line."""

from .cli import main

raise SystemExit(main())
