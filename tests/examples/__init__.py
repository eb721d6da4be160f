"""Tests of the example bank app (examples/bank) against a real PostgreSQL."""
