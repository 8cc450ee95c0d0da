"""chatd beyond one process: what nodes share through Redis (docs/cluster.md)."""
