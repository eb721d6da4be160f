"""The public namespace is small, sorted and pinned."""

from __future__ import annotations

import os
import subprocess
import sys

import uow
import uow.fastapi
import uow.jobs
import uow.migrations
import uow.prometheus
import uow.testing


def test_all_is_pinned_and_sorted() -> None:
    """uow exports exactly these names, in sorted order."""
    assert uow.__all__ == [
        "AsyncRepository",
        "AsyncUnitOfWork",
        "CommitOutcomeUnknown",
        "ConfigurationError",
        "ConnectionLost",
        "Database",
        "DatabaseUnavailable",
        "DeadlockDetected",
        "MultipleRowsFound",
        "PoolExhausted",
        "PoolStats",
        "PoolStatus",
        "Repository",
        "SerializationFailure",
        "ServerFull",
        "ServerReadOnly",
        "Settings",
        "StatementTimeout",
        "TransactionRolledBack",
        "TransientError",
        "UnitOfWork",
        "UnitOfWorkError",
        "UsageError",
        "configure",
        "get_database",
        "run_transaction",
        "run_transaction_async",
        "transactional",
    ]


def test_every_error_derives_from_the_base() -> None:
    """Every public exception is a UnitOfWorkError, so one except clause catches them all."""
    errors = [getattr(uow, name) for name in uow.__all__ if name[0].isupper()]
    errors = [e for e in errors if isinstance(e, type) and issubclass(e, BaseException)]
    assert len(errors) == 15  # AsyncRepository and AsyncUnitOfWork are not errors
    for error in errors:
        assert issubclass(error, uow.UnitOfWorkError)


def test_import_opens_no_engine() -> None:
    """Importing uow builds no default database: no engine and no I/O at import time."""
    code = "import uow, uow._default as d; assert d._default is None; print('ok')"
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_import_loads_no_optional_dependency() -> None:
    """`import uow` (and uow.testing, uow.migrations) loads no optional dependency."""
    optional = ("fastapi", "starlette", "prometheus_client", "procrastinate")
    code = (
        "import sys, uow, uow.testing, uow.migrations; "
        f"print(sorted(m for m in {optional!r} if m in sys.modules))"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_submodule_namespaces_are_pinned() -> None:
    """uow.fastapi, .jobs, .migrations, .prometheus and .testing export exactly these names."""
    assert uow.fastapi.__all__ == [
        "RETRY_AFTER",
        "exception_handlers",
        "install_exception_handlers",
        "lifespan",
        "unit_of_work",
    ]
    assert uow.jobs.__all__ == [
        "DEFAULT_MAX_SIZE",
        "DEFAULT_MIN_SIZE",
        "app",
        "check_budget",
        "connect_kwargs_for",
        "connector",
    ]
    assert uow.migrations.__all__ == [
        "DEFAULT_LOCK_TIMEOUT",
        "PermissionDenied",
        "check",
        "current",
        "downgrade",
        "engine",
        "grant",
        "on_version_apply",
        "revoke",
        "upgrade",
    ]
    assert uow.prometheus.__all__ == ["UowCollector", "register"]
    assert uow.testing.__all__ == sorted(uow.testing.__all__)
    assert set(uow.testing.__all__) == {
        "DeferredJob",
        "EmbeddedPostgres",
        "FakeUnitOfWork",
        "InMemoryRepository",
        "InMemoryStore",
        "PatroniCluster",
        "PgBouncer",
        "fake",
        "rolled_back",
    }
