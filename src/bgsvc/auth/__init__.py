"""API keys (bgsvc keys create|list|revoke) and their enforcement on every API route.

Key stores: the interface in base.py, the choice in factory.py, one module per technology
(sqlite.py, redis.py); a key's secrets in keys.py, the HTTP side in middleware.py."""
