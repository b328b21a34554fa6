"""The layers stay visible: each package is imported in a fresh interpreter and its imports inspected."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import app.batch
import app.core
import app.serving

REPO = Path(__file__).resolve().parents[1]
WEB = ("fastapi", "starlette")


def modules_of(package: object) -> list[str]:
    path = package.__path__  # type: ignore[attr-defined]
    name = package.__name__  # type: ignore[attr-defined]
    return [name] + [f"{name}.{m.name}" for m in pkgutil.iter_modules(path)]


def loaded_after_import(modules: list[str]) -> set[str]:
    """Top-level packages in sys.modules after importing ``modules`` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} | set(sys.modules))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(json.loads(out.stdout))


def test_the_core_imports_no_web_framework_and_no_torch() -> None:
    modules = modules_of(app.core)
    assert "app.core.features" in modules
    assert "app.core.predictor" in modules
    loaded = loaded_after_import(modules)
    assert not loaded & {*WEB, "torch"}
    assert not {m for m in loaded if m.startswith(("app.serving", "app.http"))}


def test_the_serving_runtime_imports_no_web_framework() -> None:
    modules = modules_of(app.serving)
    assert "app.serving.service" in modules
    assert "app.serving.batcher" in modules
    loaded = loaded_after_import(modules)
    assert not loaded & {*WEB, "torch"}
    assert not {m for m in loaded if m.startswith("app.http")}


def test_the_batch_job_runs_without_a_server_and_ray_only_when_asked() -> None:
    modules = [m for m in modules_of(app.batch) if m != "app.batch.cluster"]
    assert "app.batch.local" in modules
    loaded = loaded_after_import(modules)
    assert not loaded & {*WEB, "torch", "ray"}
    assert not {m for m in loaded if m.startswith(("app.serving", "app.http"))}
    assert not loaded_after_import(["app.batch.cluster"]) & {*WEB, "torch"}


@pytest.mark.parametrize(
    "module",
    ["model_export.pipeline", "model_export.evaluate", "model_export.export", "model_export.datasets"],
)
def test_training_imports_the_core_never_the_serving_or_http_layers(module: str) -> None:
    loaded = loaded_after_import([module, "model_export.datasets.registry"])
    assert "app.core.features" in loaded
    assert not {m for m in loaded if m.startswith(("app.serving", "app.http"))}
    assert not loaded & set(WEB)
