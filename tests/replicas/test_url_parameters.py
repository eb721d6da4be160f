"""Replicas and multi-host URLs: each server gets its own URL's libpq parameters."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy import make_url, text

from tests.conftest import database_factory
from tests.replicas.conftest import Cluster
from uow import AsyncUnitOfWork, UnitOfWork
from uow._ops.doctor import diagnose
from uow._settings import Settings

SHOWN = (
    "pg_is_in_recovery()::text",
    "current_setting('search_path')",
    "current_setting('application_name')",
    "current_setting('statement_timeout')",
    "current_setting('lock_timeout')",
)
QUERY = text(f"SELECT {', '.join(SHOWN)}")


def with_query(url: str, **query: str) -> str:
    return make_url(url).update_query_dict(query).render_as_string(hide_password=False)


def test_readonly_units_get_the_replica_urls_parameters(cluster: Cluster) -> None:
    """A replica URL's options and application_name reach the standby, sync and async."""
    name = f"uow-replica-url-{uuid.uuid4().hex[:8]}"
    replica_url = with_query(
        cluster.replicas[0].url,
        options="-c search_path=tenant_r -c statement_timeout=3s",
        application_name=name,
        connect_timeout="4",
        keepalives_idle="6",
    )
    expected = ("true", "tenant_r", name, "3s", "10s")

    async def read_async(db: Any) -> tuple[Any, ...]:
        try:
            async with AsyncUnitOfWork(db, readonly=True) as unit:
                return tuple((await unit.session.execute(QUERY)).one())
        finally:
            await db.dispose_async()

    with database_factory(
        url=cluster.primary.url, replica_urls=[replica_url], replica_read_after_write=0
    ) as make:
        db = make()
        db.check()  # the replica's budget, on a connection with its URL's parameters
        with UnitOfWork(db, readonly=True) as unit:
            assert tuple(unit.session.execute(QUERY).one()) == expected
            raw = unit.session.connection().connection.dbapi_connection
            assert raw is not None
            parameters = raw.info.get_parameters()
            assert (parameters["connect_timeout"], parameters["keepalives_idle"]) == ("4", "6")
        with UnitOfWork(db) as unit:  # the primary keeps uow's defaults
            assert tuple(unit.session.execute(QUERY).one())[3:] == ("30s", "10s")
        assert asyncio.run(read_async(db)) == expected


def test_target_session_attrs_picks_the_primary_among_several_hosts(cluster: Cluster) -> None:
    """?host=standby,primary&target_session_attrs=read-write connects to the primary."""
    standby, primary = cluster.replicas[0], cluster.primary
    url = make_url(primary.url)._replace(host=None, port=None)
    url = url.update_query_dict(
        {
            "host": f"{standby.host},{primary.host}",
            "port": f"{standby.port},{primary.port}",
            "target_session_attrs": "read-write",
        }
    )
    settings = Settings(url=url.render_as_string(hide_password=False))
    with database_factory(url=settings.url) as make:
        db = make()
        with UnitOfWork(db) as unit:
            in_recovery = unit.session.execute(text("SELECT pg_is_in_recovery()")).scalar()
            assert in_recovery is False
        db.check()
    report = diagnose(settings)
    assert [(h["port"], h["in_recovery"], h["connected"]) for h in report.hosts] == [
        (str(standby.port), True, False),
        (str(primary.port), False, True),
    ]
