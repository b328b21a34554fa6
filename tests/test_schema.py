"""Tests for the OpenAPI schema (app.http.schemas), fuzzed by schemathesis against a loopback server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.contract import NUM_COMPARE_FEATURES
from tests.conftest import serving

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def url(served_model: Path) -> Iterator[str]:
    with serving(served_model, max_upload_bytes=2_000_000, max_duration_s=60) as base:
        yield base


def test_schema_documents_every_route_with_examples_and_error_shapes(url: str) -> None:
    schema = httpx.get(f"{url}/openapi.json").json()
    paths = schema["paths"]
    assert set(paths) == {
        "/v1/predict",
        "/v1/predict/features",
        "/v1/models/default",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/metrics",
    }
    upload = paths["/v1/predict"]["post"]
    assert upload["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["file"]
    assert {p["name"] for p in upload["parameters"]} == {"offset_s", "duration_s"}
    features = paths["/v1/predict/features"]["post"]["requestBody"]["content"]
    assert set(features) == {"application/json", "application/x-npy"}
    components = schema["components"]["schemas"]
    for name in (
        "FeaturesRequest",
        "BatchFeaturesRequest",
        "FeaturesItem",
        "InferenceRequest",
        "RequestInput",
    ):
        assert name in components
    assert components["AudioPredictionResponse"]["examples"][0]["frames"][0]["start_s"] == 0.0
    for code in ("413", "415", "422", "503", "504"):
        ref = upload["responses"][code]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ErrorResponse"
    assert "HTTPValidationError" not in components  # FastAPI's 422 shape is replaced by the one shape
    # The documented bodies are as strict as the server where JSON Schema can say it: F values per
    # frame, a float32 range, [B >= 1, T >= 1, F] for OIP (its Literal must be the contract's width).
    row = components["FeaturesRequest"]["properties"]["features"]["items"]
    assert row["minItems"] == row["maxItems"] == NUM_COMPARE_FEATURES
    assert row["items"]["maximum"] == pytest.approx(float(np.finfo(np.float32).max))
    shape = components["RequestInput"]["properties"]["shape"]["prefixItems"]
    assert [s["exclusiveMinimum"] for s in shape[:2]] == [0, 0]
    assert shape[2]["const"] == NUM_COMPARE_FEATURES


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_never_get_a_5xx_and_responses_match_the_schema(
    url: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # every operation's schema is usable
        operations.append(result.ok())
    assert len(operations) == 10
    if mode is GenerationMode.NEGATIVE:
        # Invalid data needs something to break: a body or a query parameter (a string path parameter
        # has no invalid value).
        operations = [op for op in operations if op.body or list(op.query)]
        assert {op.label for op in operations} == {
            "POST /v1/predict",
            "POST /v1/predict/features",
            "POST /v2/models/{name}/infer",
        }
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=6,
            deadline=timedelta(seconds=20),
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Case[Any]) -> None:
            case.call_and_validate(base_url=url, checks=CHECKS, timeout=30)

        check()
