"""Model registry, fetching, the ONNX Runtime engine and the scheduler. Never imports FastAPI."""
