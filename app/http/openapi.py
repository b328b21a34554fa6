"""OpenAPI customisation: documented bodies of the self-parsed routes, error responses, components.

Routes read their bodies as bytes (the body limit is enforced while they stream in) and parse them in
worker threads (:mod:`app.serving.payloads`), so FastAPI cannot infer their schemas: the request bodies
are described here and their models joined to the schema's components by :func:`install_openapi`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from app.http.schemas import BatchFeaturesRequest, ErrorResponse, FeaturesRequest, InferenceRequest
from app.serving.payloads import NPY_MEDIA_TYPE

__all__ = ["AUDIO_BODY", "FEATURES_BODY", "INFER_BODY", "error_responses", "install_openapi"]

# Request bodies documented here and parsed by app.serving.payloads; their models join the components.
_BODY_MODELS: tuple[type[BaseModel], ...] = (FeaturesRequest, BatchFeaturesRequest, InferenceRequest)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


AUDIO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "WAV, FLAC, OGG/Vorbis, Opus or MP3, 8–192 kHz, any channels.",
                        }
                    },
                    "required": ["file"],
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary", "description": "The audio file itself."}
            },
        },
    }
}
FEATURES_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"oneOf": [_ref(FeaturesRequest), _ref(BatchFeaturesRequest)]}},
            NPY_MEDIA_TYPE: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "A NumPy .npy file of one float32 (T, F) array (no pickles).",
                }
            },
        },
    }
}
INFER_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(InferenceRequest)}}}
}

_ERROR_TEXT = {
    401: "Missing or wrong API key (only when one is configured).",
    404: "No such model.",
    413: "Body, audio duration or frame count over the configured limit.",
    415: "Unsupported audio format or Content-Type.",
    422: "Invalid request, audio or features (the message names the expected shape).",
    503: "Model not ready, overloaded (with Retry-After) or shutting down.",
    504: "The request took longer than the configured timeout.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error responses of a route, all in the one error shape."""
    return {code: {"model": ErrorResponse, "description": _ERROR_TEXT[code]} for code in codes}


def install_openapi(app: FastAPI) -> None:
    """Add the models of the self-parsed request bodies to the OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in _BODY_MODELS:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    setattr(app, "openapi", openapi)  # noqa: B010 - FastAPI's documented way to customise the schema
