"""Tests for app.serving.metrics and its middleware: what /metrics shows after real traffic."""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.serving.metrics import ServiceMetrics
from app.settings import Settings
from model_export.testing import encode, synth_music
from tests.conftest import running_server, serving

F = 6373


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scraped: Samples, name: str, **labels: str) -> float:
    return scraped[(name, tuple(sorted(labels.items())))]


def test_metrics_after_real_traffic(served_model: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros((3, F), np.float32))
    with serving(served_model) as url:
        audio = encode(synth_music(2.0, 16_000), 16_000)
        assert (
            httpx.post(f"{url}/v1/predict", files={"file": ("a.wav", audio)}, timeout=60).status_code == 200
        )
        for _ in range(2):
            r = httpx.post(
                f"{url}/v1/predict/features",
                content=buf.getvalue(),
                headers={"content-type": "application/x-npy"},
            )
            assert r.status_code == 200
        assert httpx.post(f"{url}/v2/models/nope/infer", json={}).status_code == 404
        assert httpx.get(f"{url}/no/such/path/123").status_code == 404
        r = httpx.get(f"{url}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    scraped = samples(r.text)

    def requests(route: str, status: str, method: str = "POST") -> float:
        return value(scraped, "mer_http_requests_total", method=method, route=route, status=status)

    assert requests("/v1/predict", "200") == 1
    assert requests("/v1/predict/features", "200") == 2
    # Route templates, never raw paths: the label set cannot grow with what clients send.
    assert requests("/v2/models/{name}/infer", "404") == 1
    assert requests("<unmatched>", "404", method="GET") == 1
    assert not any("nope" in str(key) or "123" in str(key) for key in scraped)
    latency = value(
        scraped, "mer_http_request_duration_seconds_count", method="POST", route="/v1/predict", status="200"
    )
    assert latency == 1
    # Stage histograms reach 60 s; decode and extract per clip, infer per batch.
    for stage, count in (("decode", 1), ("extract", 1)):
        assert value(scraped, "mer_stage_duration_seconds_count", stage=stage) == count
        assert value(scraped, "mer_stage_duration_seconds_bucket", stage=stage, le="60.0") == count
    assert value(scraped, "mer_stage_duration_seconds_count", stage="infer") >= 1
    assert value(scraped, "mer_batch_size_sum") == 3
    assert value(scraped, "mer_http_requests_in_flight") == 1  # the scrape itself
    assert value(scraped, "mer_queued", queue="pool") == 0
    assert value(scraped, "mer_queued", queue="batch") == 0
    assert value(scraped, "mer_ready") == 1
    info = {k: v for k, v in scraped if k == "mer_model_info"}
    assert info == {
        "mer_model_info": (
            ("feature_set", "ComParE_2016"),
            ("name", "tiny"),
            ("provider", "CPUExecutionProvider"),
            ("sample_rate", "16000"),
            ("version", "0.0.1"),
        )
    }


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.batch_size.observe(4)
    assert "mer_batch_size_count 1.0" in first.render().decode()
    assert "mer_batch_size_count 0.0" in second.render().decode()
    # Two apps in one process (as in these tests) count separately.
    app_a = create_app(Settings(model_path=tmp_path / "none.onnx"))
    app_b = create_app(Settings(model_path=tmp_path / "none.onnx"))
    with running_server(app_a) as url_a, running_server(app_b) as url_b:
        httpx.get(f"{url_a}/v2/health/live")
        text_b = httpx.get(f"{url_b}/metrics").text
    assert not re.search(r'route="/v2/health/live"', text_b)
    assert "mer_ready 0.0" in text_b
