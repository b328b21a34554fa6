"""mer-score --engine ray on a real two-node Ray cluster on loopback: the same output as the local engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from app.batch.cli import main
from app.batch.output import ERRORS, SUMMARY
from model_export.testing import encode, local_ray_cluster, synth_music

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head and a second worker node, one CPU each, started with ``ray start`` on 127.0.0.1."""
    with local_ray_cluster(nodes=2, cpus_per_node=1) as address:
        yield address


@pytest.fixture(scope="module")
def dozen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve synthesised clips at three rates, a broken file, and a manifest with a missing path."""
    root = tmp_path_factory.mktemp("dozen")
    for i in range(12):
        rate = (16_000, 22_050, 44_100)[i % 3]
        (root / f"clip{i:02d}.wav").write_bytes(encode(synth_music(2.0 + 0.25 * i, rate, seed=i), rate))
    (root / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    (root / "extra.jsonl").write_text(
        json.dumps({"id": "ranged", "path": "clip11.wav", "offset_s": 1.0, "duration_s": 2.0})
        + "\n"
        + json.dumps({"id": "missing", "path": "gone.wav"})
        + "\n"
    )
    return root


def test_the_ray_engine_writes_what_the_local_engine_writes(
    cluster: str, dozen: Path, served_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MER_MODEL_PATH", str(served_model))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    inputs = [str(dozen), str(dozen / "extra.jsonl")]
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main([*inputs, "--out", str(local), "--no-progress"]) == 0
    # Two extract actors of one CPU each on nodes of one CPU each: one runs on each node.
    ray_args = ["--engine", "ray", "--address", cluster, "--extract-actors", "2", "--chunk", "8"]
    assert main([*inputs, "--out", str(remote), "--no-progress", *ray_args]) == 0

    a, b = pq.read_table(local).sort_by("id"), pq.read_table(remote).sort_by("id")
    assert a.num_rows == 13
    assert a.equals(b)

    def failures(out: Path) -> set[tuple[str, str]]:
        return {(e["id"], e["code"]) for e in map(json.loads, (out / ERRORS).read_text().splitlines())}

    assert (
        failures(local) == failures(remote) == {("broken.wav", "unsupported_audio"), ("missing", "not_found")}
    )
    summary = json.loads((remote / SUMMARY).read_text())
    assert (summary["engine"], summary["done"], summary["failed"]) == ("ray", 13, 2)

    # Resumed on the cluster: nothing left to do.
    assert main([*inputs, "--out", str(remote), "--no-progress", *ray_args]) == 0
    again = json.loads((remote / SUMMARY).read_text())
    assert (again["done"], again["skipped"]) == (0, 13)
