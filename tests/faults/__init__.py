"""Fault injection: uow's pool and units of work against a throwaway PostgreSQL that misbehaves."""
