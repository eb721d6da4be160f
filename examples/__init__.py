"""Example applications built on uow."""
