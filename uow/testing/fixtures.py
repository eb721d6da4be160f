"""pytest fixtures for integration tests of code that uses uow.

Enable them in your ``conftest.py``::

    pytest_plugins = ["uow.testing.fixtures"]

``uow_database`` is one database for the whole test session: the server named by
``UOW_TEST_DATABASE_URL``, or else a throwaway PostgreSQL started in a temporary
directory (``pip install 'uow[testing]'``) and removed afterwards. Create your
schema on it in a session fixture of your own (for example with alembic).

``uow_transaction`` runs each test's units of work in one transaction that is
rolled back at the end, and installs that database as the default.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .._database import Database
from .._settings import Settings
from ._postgres import EmbeddedPostgres
from ._transactional import rolled_back


@pytest.fixture(scope="session")
def uow_database() -> Iterator[Database]:
    """One Database for the test session, on UOW_TEST_DATABASE_URL or an embedded server."""
    url = os.environ.get("UOW_TEST_DATABASE_URL")
    if url:
        with Database(Settings(url=url)) as database:
            yield database
        return
    with EmbeddedPostgres() as server, Database(Settings(url=server.url)) as database:
        yield database


@pytest.fixture
def uow_transaction(uow_database: Database) -> Iterator[Database]:
    """A Database whose units of work are rolled back when the test ends."""
    with rolled_back(uow_database) as database:
        yield database
