"""The shared job store for a fleet: records in Redis, delivery by dramatiq (store.py)."""
