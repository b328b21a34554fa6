"""Continuous-time music emotion recognition service (arousal/valence per 500 ms frame).

Three layers, imports pointing down only: :mod:`app.http` (the edge: FastAPI routers, schemas,
middleware, the one error handler) → :mod:`app.serving` (the runtime: pool, batcher, service,
lifecycle; no web framework) → :mod:`app.core` (decode, the one feature path, the contract, the
predictor; no web framework, no torch). :mod:`app.settings` is the one settings object,
:mod:`app.logs` the logging set-up and :mod:`app.main` the entry point
(``uvicorn --factory app.main:create_app``).
"""

__version__ = "0.1.0"
