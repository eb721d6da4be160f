"""The engine's internals: pool, liveness, outage backoff, error classification, timeouts,
budget, metrics, monitor, replicas and bulk loads.

They import only each other, :mod:`uow._settings` and :mod:`uow._errors`
(``tests/unit/test_layers.py``); the request path above uses them through
:class:`uow.Database`.
"""
