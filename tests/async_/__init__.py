"""AsyncUnitOfWork held to the sync unit of work's rules, under cancellation and faults."""
