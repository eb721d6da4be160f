"""Helpers for testing code that uses uow.

- :class:`EmbeddedPostgres`: a throwaway PostgreSQL server in a temporary directory.
- :class:`PatroniCluster`: a throwaway Patroni cluster (etcd, PostgreSQL nodes, haproxy) on
  loopback, with switchover, leader kill and the URLs to reach it (needs ``patroni``,
  ``etcd`` and ``haproxy`` installed).
- :class:`PgBouncer`: a throwaway PgBouncer in front of a server (needs ``pgbouncer`` installed).
- :class:`rolled_back`: run units of work inside one transaction that is rolled back
  (``with`` for UnitOfWork, ``async with`` for AsyncUnitOfWork).
- ``uow.testing.fixtures``: pytest fixtures built on both.
- :func:`fake`, :class:`FakeUnitOfWork`, :class:`InMemoryRepository`, :class:`InMemoryStore`:
  the in-memory twin of a unit of work, for fast unit tests of domain code (no database);
  :class:`DeferredJob` is what it records for each deferred job (``store.jobs``).
"""

from .._jobs import DeferredJob
from ._memory import FakeUnitOfWork, fake
from ._memory_repository import InMemoryRepository
from ._memory_store import InMemoryStore
from ._patroni import PatroniCluster
from ._pgbouncer import PgBouncer
from ._postgres import EmbeddedPostgres
from ._transactional import rolled_back

__all__ = [
    "DeferredJob",
    "EmbeddedPostgres",
    "FakeUnitOfWork",
    "InMemoryRepository",
    "InMemoryStore",
    "PatroniCluster",
    "PgBouncer",
    "fake",
    "rolled_back",
]
