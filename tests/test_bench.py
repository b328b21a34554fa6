from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.infer import ceiling_vs_matmul, lstm_flops, model_flops, node_parts
from model_export.model import PRESETS, build_model

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("preset", ["LSTM_AT_200", "LSTM_NAT_200", "LSTM_AT_300_128"])
def test_model_flops_agree_with_torchs_counter(preset: str, one_torch_thread: None) -> None:
    cfg = dataclasses.replace(PRESETS[preset], num_features=300, num_outputs=2)
    model = build_model(cfg, seed=0).eval()
    frames, batch = 20, 2
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(batch, frames, cfg.num_features))
    # torch's counter sees matmuls only: not the fused LSTM kernels. The attention's weighted sum is
    # one matmul of a (T, T + W) band with the padded states, whose zeros torch counts too: model_flops
    # counts the W useful multiply-adds per frame (what "achieved GFLOP/s" is about), the band T + W.
    lstm, width = 0.0, cfg.num_features
    for hidden in cfg.hidden_sizes:
        lstm += 2.0 * 4 * hidden * (width + hidden) * frames
        width = hidden
    context, band = 0.0, 0.0
    if cfg.kind == "AT":
        context = 2.0 * cfg.attention_window * cfg.hidden_sizes[-1] * frames
        band = 2.0 * (frames + cfg.attention_window) * cfg.hidden_sizes[-1] * frames
    expected = model_flops(cfg, frames) - lstm - context + band
    assert counter.get_total_flops() == pytest.approx(batch * expected)


def test_infer_benchmark_runs_and_reports_ratios(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(REPO / "bench" / "infer.py"), "--preset", "LSTM_NAT_200", "--frames", "3"]
    cmd += ["--batches", "2", "--threads", "1", "--repeats", "1", "--warmup", "0", "--json", str(out)]
    cmd += ["--shipped", str(tmp_path / "absent.onnx")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    assert "ORT / eager" in result.stdout
    (row,) = json.loads(out.read_text())["rows"]
    assert row["batch"] == 2
    assert row["threads"] == 1
    for key in ("ort_ms_per_clip", "torch_ms_per_clip", "ort_gflops", "matmul_gflops", "ort_vs_torch"):
        assert row[key] > 0
    assert row["shipped_ms_per_clip"] is None


def test_node_parts_group_the_profile_by_the_graphs_modules() -> None:
    def node(name: str, op: str, dur: float) -> dict[str, object]:
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "args": {"op_name": op}}

    events = [
        node("/model/encoder.0/LSTM", "LSTM", 700.0),
        node("/normaliser/Log", "Log", 50.0),
        node("/normaliser/Clip_1", "Clip", 10.0),
        node("/model/attention/Sigmoid_3", "Sigmoid", 90.0),
        node("/smoother/Conv", "Conv", 5.0),
        node("/model/output_rnn/RNN", "RNN", 20.0),
        {"cat": "Node", "name": "/normaliser/Log_fence_before", "dur": 999.0, "args": {"op_name": "Log"}},
        {"cat": "Session", "name": "model_run", "dur": 2000.0},
    ]
    parts = node_parts(events)
    assert parts == {"lstm": 700.0, "normaliser": 60.0, "attention": 90.0, "smoothing": 5.0, "other": 20.0}
    # At the matmul's speed the 1.4 GFLOP of gates would take 14 ms; everything else takes 0.175 ms.
    ceiling = ceiling_vs_matmul({**parts, "lstm": 20_000.0}, 1.4e9, 1.5e9, 1e11)
    assert ceiling == pytest.approx((1.5e9 / (0.014 + 175e-6)) / 1e11)
    # A measured LSTM faster than the matmul is taken as it is (the bound cannot be below the run).
    assert ceiling_vs_matmul(parts, 1.4e9, 1.5e9, 1e11) == pytest.approx((1.5e9 / 875e-6) / 1e11)
    assert lstm_flops(PRESETS["LSTM_AT_400"], 61) == pytest.approx(2 * 4 * 400 * (6373 + 400) * 61)


def test_infer_benchmark_profiles_the_graphs_parts(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(REPO / "bench" / "infer.py"), "--preset", "LSTM_AT_200", "--frames", "8"]
    cmd += ["--batches", "2", "--threads", "1", "--repeats", "2", "--warmup", "0", "--json", str(out)]
    cmd += ["--shipped", str(tmp_path / "absent.onnx"), "--profile"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    assert "ceiling ORT / matmul" in result.stdout
    (row,) = json.loads(out.read_text())["rows"]
    prof = row["profile"]
    assert sum(prof["share"].values()) == pytest.approx(1.0)
    # A real exported graph: its LSTM node, normaliser and attention nodes are all found by name.
    for part in ("lstm", "normaliser", "attention"):
        assert prof["ms_per_batch"][part] > 0, part
    assert prof["ceiling_vs_matmul"] > 0


def test_serve_benchmark_runs_against_a_real_server(tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "bench" / "serve.py"), "--model", str(tmp_path / "absent.onnx")]
    cmd += ["--concurrency", "1", "2", "--requests", "2", "--routes", "features-npy", "--cell-seconds", "5"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    assert "exporting a tiny model" in result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| features-npy")]
    assert len(rows) == 2
    assert all("| 2/2 |" in row for row in rows)
    # Same-run references and ratios: bare extraction and inference, batching on vs off.
    assert re.search(r"bare extraction: [\d.]+ audio s/s", result.stdout)
    assert re.search(r"features-npy at concurrency 2 vs bare inference: \d+ %", result.stdout)
    assert re.search(
        r"features-npy at concurrency 2: batching on vs off \(MER_MAX_BATCH=1\) [\d.]+x", result.stdout
    )


def test_long_song_benchmark_runs_every_part(tmp_path: Path) -> None:
    from app.core.contract import FeatureConfig
    from model_export.testing import export_tiny_model

    model = export_tiny_model(tmp_path, features=FeatureConfig(chunk_frames=20, chunk_preroll_frames=4))
    cmd = [sys.executable, str(REPO / "bench" / "long_song.py"), "--model", str(model), "--synthetic"]
    cmd += ["--song-s", "25", "--long-s", "40", "--grid", "20:0", "20:4", "--repeats", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    out = result.stdout
    rows = [line for line in out.splitlines() if line.startswith("| 20 |")]
    assert len(rows) == 2  # one deviation row per grid entry
    assert re.search(r"2 threads vs one pass: [\d.]+x faster", out)
    assert re.search(r"1 worker [\d.]+ s, 2 workers [\d.]+ s: [\d.]+x faster", out)
    assert re.search(r"beside a 40 s song [\d.]+ s", out)
    assert re.search(r"memory, 40 s song .* idle \d+ MiB, peak \d+ MiB \(\+\d+\)", out)


def test_stream_benchmark_measures_latency_and_the_running_gain(tmp_path: Path) -> None:
    from model_export.real_music import PACKAGES
    from model_export.testing import export_tiny_model
    from tests.test_real_music import _deb

    model = export_tiny_model(tmp_path, step=True)
    # Fake Debian packages in the real layout (the running-gain part reads them like the real ones).
    songs = "usr/share/games/fretsonfire/data/songs/muldjord"
    _deb(tmp_path, PACKAGES[0], {f"{songs}/storm/song.ogg": 12.0, f"{songs}/storm/guitar.ogg": 12.0})
    _deb(tmp_path, PACKAGES[1], {"usr/share/scummvm/drascula/en/track2.ogg": 21.0})
    out = tmp_path / "stream.json"
    cmd = [sys.executable, str(REPO / "bench" / "stream.py"), "--model", str(model), "--synthetic"]
    cmd += ["--cells", "4x1@20", "2x2@100", "--seconds", "2", "--max-seconds", "6"]
    cmd += ["--cache", str(tmp_path / "cache"), "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    assert re.search(r"2x 2 stream\(s\) 100 ms: [\d.]+x", result.stdout)  # the same-run ratio
    data = json.loads(out.read_text())
    fast, pair = data["latency"]["cells"]
    assert (fast["speed"], fast["streams"], fast["piece_ms"]) == (4.0, 1, 20)
    assert fast["frames"] == fast["frames_expected"] == 12  # 6 s of audio (2 s x 4, capped at 6)
    assert pair["frames"] == pair["frames_expected"] == 2 * 8
    for cell in (fast, pair):
        assert 0 < cell["from_needed_sample_ms"]["p50"] <= cell["from_last_sample_ms"]["p50"]
    gain = data["running_gain"]
    assert [t["track"] for t in gain["tracks"]] == ["fof/storm", "drascula/track2"]
    assert gain["pooled"]["all"]["frames"] == 24 + 42
    # A live stream with its running gain is close to, but not exactly, the offline prediction.
    mean = gain["pooled"]["all"]["live_vs_served"]["mean"]
    assert all(0 <= m < 0.2 for m in mean)
