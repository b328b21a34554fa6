"""Training, evaluation and ONNX export (imports app.contract and app.features, never the HTTP layer)."""
