"""`newsletter bounces` (being written)."""
