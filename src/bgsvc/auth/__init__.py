"""API keys (bgsvc keys create|list|revoke) and their enforcement on every API route."""
