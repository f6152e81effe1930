"""The BentoML service: HTTP API over the model store, ONNX Runtime only (no torch)."""
