"""cosmicpython's unit-of-work tests (Architecture Patterns with Python, ch. 6-7) on uow."""
