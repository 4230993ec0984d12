"""bgsvc: a background-removal HTTP service on ONNX Runtime."""

__version__ = "0.1.0"
