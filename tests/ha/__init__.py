"""High availability: failovers, read-only primaries and hung servers, on real servers."""
