"""Tests for the optional API key (app.http.middleware.ApiKeyMiddleware) on a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import serving

KEY = "s3cret-key"
F = 6373
FEATURES = {"features": np.zeros((1, F)).tolist()}


@pytest.fixture(scope="module")
def url(served_model: Path) -> Iterator[str]:
    with serving(served_model, api_key=KEY) as base:
        yield base


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {KEY}"}, {"authorization": KEY}],
    ids=["missing", "wrong", "other-scheme", "no-scheme"],
)
def test_protected_routes_need_the_key(url: str, headers: dict[str, str]) -> None:
    for method, path in (
        ("POST", "/v1/predict/features"),
        ("GET", "/v1/models/default"),
        ("GET", "/v2"),
        ("GET", "/v2/models/tiny"),
        ("POST", "/v2/models/tiny/infer"),
    ):
        r = httpx.request(method, f"{url}{path}", json=FEATURES, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "unauthorized"
        assert KEY not in r.text


def test_the_right_key_opens_them(url: str) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    assert httpx.post(f"{url}/v1/predict/features", json=FEATURES, headers=auth).status_code == 200
    assert httpx.get(f"{url}/v2/models/tiny", headers=auth).status_code == 200
    assert (
        httpx.get(f"{url}/v1/models/default", headers={"authorization": f"bearer {KEY}"}).status_code == 200
    )


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json"])
def test_probes_metrics_and_the_schema_stay_open(url: str, path: str) -> None:
    assert httpx.get(f"{url}{path}").status_code == 200


def test_the_schema_documents_bearer_auth(url: str) -> None:
    schema = httpx.get(f"{url}/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/v1/predict"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/v2/health/ready"]["get"]


def test_without_a_key_configured_nothing_is_asked(served_model: Path) -> None:
    with serving(served_model) as base:
        assert httpx.post(f"{base}/v1/predict/features", json=FEATURES).status_code == 200
        assert "securitySchemes" not in httpx.get(f"{base}/openapi.json").json().get("components", {})
