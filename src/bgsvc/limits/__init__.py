"""Per-key rate limits and monthly quotas: the interface in base.py, the choice in
factory.py, one module per technology (sqlite.py, redis.py)."""
