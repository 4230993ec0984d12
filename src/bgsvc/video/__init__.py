"""Video decoding and encoding in a child process: the serving process never parses an
untrusted container or stream itself (``sandbox`` runs the child, ``child`` is it,
``protocol`` is how the two talk)."""
