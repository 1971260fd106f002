"""`newsletter doctor` (being written)."""
