"""Pure image functions: decode and guard, refine, composite, encode. No I/O, no FastAPI."""
