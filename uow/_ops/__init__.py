"""The operator tools and the command line: ``uow doctor``, ``uow top``, ``uow migrate``.

Nothing in the request path imports them (``import uow`` loads none of them); only
``uow/__main__.py`` does (``tests/unit/test_layers.py``).
"""
