"""The HTTP edge: the only place that imports FastAPI or Starlette.

What belongs here: one ``APIRouter`` per surface in :mod:`~app.http.routes` (v1, Open Inference
Protocol v2, operations), the dependencies they share (:mod:`~app.http.deps`), the response and
request models (:mod:`~app.http.schemas`), the pure-ASGI middleware (:mod:`~app.http.middleware`), the
ONE module that turns any error into the JSON error shape (:mod:`~app.http.errors`) and the OpenAPI
customisation (:mod:`~app.http.openapi`). Routes parse, call the service, shape; nothing else.

What it may import: :mod:`app.core`, :mod:`app.serving`, :mod:`app.settings` and the web framework.
Nothing below it imports it.
"""
