"""The embedded job store: one SQLite file under the data directory (store.py, schema.py)."""
