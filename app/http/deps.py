"""Dependencies the routes share: the lifecycle state, the running service, the named model, auth.

Routes declare what they need as ``Annotated`` parameters (``service: ServiceDep``); the state lives
on ``app.state.mer``, put there by :func:`app.main.create_app`, so the routers are plain module-level
``APIRouter`` objects with no closures over the app.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPBearer

from app.core.errors import ModelNotReadyError, NotFoundError
from app.serving.lifecycle import ServiceState
from app.serving.service import EmotionService

__all__ = [
    "OPEN_PATHS",
    "ModelName",
    "NamedServiceDep",
    "ServiceDep",
    "StateDep",
    "auth_dependencies",
    "get_service",
    "get_state",
]

#: Paths that need no API key: probes and scraping must work without the clients' secret.
OPEN_PATHS = (
    "/v2/health/live",
    "/v2/health/ready",
    "/metrics",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/openapi.json",
)

_bearer = HTTPBearer(auto_error=False, description="The configured API key.")


def auth_dependencies(protect: bool) -> list[Any]:
    """Dependencies of the protected routers: bearer auth, documented in OpenAPI when a key is set.

    The check itself is :class:`~app.http.middleware.ApiKeyMiddleware`, which runs before the body
    is read; this only makes the schema say which routes need the key.
    """
    return [Depends(_bearer)] if protect else []


def get_state(request: Request) -> ServiceState:
    """The application's lifecycle state."""
    state: ServiceState = request.app.state.mer
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_service(state: StateDep) -> EmotionService:
    """The running service.

    Raises:
        ModelNotReadyError: While the model is missing, loading or unusable, or during shutdown (503).
    """
    if not state.ready or state.service is None:
        raise ModelNotReadyError(state.reason)
    return state.service


ServiceDep = Annotated[EmotionService, Depends(get_service)]

# With postponed annotations, FastAPI resolves parameter types from the module's globals.
ModelName = Annotated[str, Path(description="The served model's name (see GET /v1/models/default).")]


def get_named_service(name: ModelName, service: ServiceDep) -> EmotionService:
    """The running service, if it serves the model named in the path.

    Raises:
        NotFoundError: For another name (404).
    """
    if name != service.predictor.model_name:
        raise NotFoundError(f"no model named {name!r}; this server serves {service.predictor.model_name!r}")
    return service


NamedServiceDep = Annotated[EmotionService, Depends(get_named_service)]
