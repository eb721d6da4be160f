"""Helpers for testing code that uses uow.

- :class:`EmbeddedPostgres`: a throwaway PostgreSQL server in a temporary directory.
- :func:`rolled_back`: run units of work inside one transaction that is rolled back.
- ``uow.testing.fixtures``: pytest fixtures built on both.
"""

from ._postgres import EmbeddedPostgres
from ._transactional import rolled_back

__all__ = ["EmbeddedPostgres", "rolled_back"]
