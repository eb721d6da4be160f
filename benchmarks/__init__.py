"""Benchmarks of uow against raw psycopg, SQLAlchemy Core and ORM, and pgbench.

Run by hand, not by the test suite: ``python -m benchmarks.run`` (``--quick`` for a
smoke check). See ``benchmarks/README.md`` for what is measured and how to read it.
"""
