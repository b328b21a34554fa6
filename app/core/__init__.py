"""The framework-free core: decode, THE feature path, the model contract, the predictor, summaries.

What belongs here: everything that turns audio or features into per-frame emotion and that training,
serving and any batch job share — :mod:`~app.core.audio` (decode), :mod:`~app.core.features` (the one
feature path), :mod:`~app.core.contract` (the vocabulary: tensor and output names, feature width,
hop/window, and the contract carried in the ONNX metadata), :mod:`~app.core.predictor` (ONNX
Runtime), :mod:`~app.core.emotion` (clip summaries, circumplex quadrants), :mod:`~app.core.errors`
(the one error hierarchy, each class with its status) and :mod:`~app.core.types` (array aliases).

What it may import: numpy, soundfile, soxr, opensmile and onnxruntime, and itself. Never a web
framework (FastAPI, Starlette), never torch, never :mod:`app.serving` or :mod:`app.http`
(``tests/test_layers.py`` checks this in a fresh interpreter).
"""
