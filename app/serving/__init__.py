"""The serving runtime: one request's decode → extract → infer, within bounds, without a web framework.

What belongs here: :mod:`~app.serving.pool` (worker threads for decoding and extraction),
:mod:`~app.serving.batcher` (dynamic batches for the one inference thread),
:mod:`~app.serving.payloads` (request bodies → arrays, bounded), :mod:`~app.serving.service` (the
:class:`~app.serving.service.EmotionService` a route calls once per request),
:mod:`~app.serving.lifecycle` (load, warm up, drain) and :mod:`~app.serving.metrics` (Prometheus).

What it may import: :mod:`app.core`, :mod:`app.settings`, python-multipart (body parsing) and
prometheus-client. Never FastAPI or Starlette (``tests/test_layers.py`` checks this): the HTTP edge
in :mod:`app.http` calls in, nothing here calls out.
"""
