"""`newsletter dkim` (being written)."""
