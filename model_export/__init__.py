"""Training, evaluation and ONNX export: the research side, on the same core as the service.

What belongs here: dataset recipes (:mod:`~model_export.datasets`), the feature cache, the paper's
models, training, cross-validation and reports, checkpoints, export and the model card, and the
pipeline steps (:mod:`~model_export.pipeline`) the CLI (``python -m model_export``) calls.

What it may import: :mod:`app.core` (the one feature path, the contract, the predictor) and torch,
onnx, scipy, matplotlib. Never :mod:`app.serving` or :mod:`app.http` (``tests/test_layers.py``).
"""
