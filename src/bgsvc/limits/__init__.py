"""Per-key rate limits and monthly quotas (interface in api.py)."""
