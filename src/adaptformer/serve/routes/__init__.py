"""The server's endpoints by concern: ``status`` (the page, health, readiness, metrics), ``tasks`` (listing,
loading, refreshing, removing task files), ``predict`` (answers)."""
