"""mer-score on this machine: inputs, the real core path, Parquet/JSONL parts, failures, resume, bounds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from app.batch import output as output_module
from app.batch.cli import main
from app.batch.local import run_local
from app.batch.output import ERRORS, SCHEMA, SUMMARY, DoneIds, OutputFolder
from app.batch.scoring import Limits, Scorer
from app.batch.tracks import InputProblem, Track, count_tracks, iter_tracks
from app.core.predictor import Predictor
from model_export.testing import encode, synth_music
from tests.conftest import serving

LIMITS = Limits(max_duration_s=900.0, max_decoded_samples=172_800_000)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small catalogue: WAV and FLAC at several rates in nested folders, one broken file, a text file."""
    root = tmp_path_factory.mktemp("catalogue")
    (root / "rock" / "live").mkdir(parents=True)
    (root / "jazz").mkdir()
    (root / "rock" / "a.wav").write_bytes(encode(synth_music(4.0, 22_050, seed=1), 22_050))
    (root / "rock" / "live" / "b.flac").write_bytes(encode(synth_music(3.2, 44_100, seed=2), 44_100, "FLAC"))
    (root / "jazz" / "c.wav").write_bytes(encode(synth_music(2.6, 16_000, seed=3), 16_000))
    (root / "jazz" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    (root / "jazz" / "notes.txt.md").write_text("not audio")
    return root


@pytest.fixture(scope="module")
def scorer(served_model: Path) -> Scorer:
    return Scorer(Predictor.load(served_model, intra_op_threads=1), LIMITS)


def read_errors(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / ERRORS).read_text().splitlines()]


# --- inputs -----------------------------------------------------------------------------------------------


def test_a_folder_is_walked_recursively_in_order_with_relative_ids(catalogue: Path) -> None:
    items = list(iter_tracks([catalogue]))
    assert [t.id for t in items] == ["jazz/broken.wav", "jazz/c.wav", "rock/a.wav", "rock/live/b.flac"]
    assert all(isinstance(t, Track) and Path(t.path).is_file() for t in items)
    assert count_tracks([catalogue]) == 4


def test_manifests_and_path_lists_give_tracks_and_problems(tmp_path: Path, catalogue: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "id,path,offset_s,duration_s\n"
        f"x,{catalogue / 'rock/a.wav'},1.5,2\n"
        "y,rel/song.mp3,,\n"
        ",nameless.wav,,\n"
        "z,,,\n"
        "w,q.wav,soon,\n"
        "v,q.wav,0,inf\n"
    )
    items = list(iter_tracks([tmp_path / "m.csv"]))
    assert items[0] == Track("x", str(catalogue / "rock/a.wav"), 1.5, 2.0)
    assert items[1] == Track("y", str(tmp_path / "rel/song.mp3"))  # relative to the manifest
    assert items[2].id == "nameless.wav"  # no id: the path is the id
    problems = [i for i in items[3:] if isinstance(i, InputProblem)]
    assert len(problems) == 3
    assert "no 'path'" in problems[0].message
    assert "offset_s must be a number" in problems[1].message
    assert "must be finite" in problems[2].message

    (tmp_path / "m.jsonl").write_text(
        json.dumps({"id": 7, "path": "a.wav", "duration_s": 3}) + "\n\n{not json\n[1, 2]\n"
    )
    jsonl = list(iter_tracks([tmp_path / "m.jsonl"]))
    assert jsonl[0] == Track("7", str(tmp_path / "a.wav"), 0.0, 3.0)
    assert [type(i) for i in jsonl[1:]] == [InputProblem, InputProblem]

    (tmp_path / "list.txt").write_text("# my picks\n\nrock/a.wav\n/abs/b.flac\n")
    assert [t.path for t in iter_tracks([tmp_path / "list.txt"])] == [
        str(tmp_path / "rock/a.wav"),
        "/abs/b.flac",
    ]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(iter_tracks([tmp_path / "missing"]))


# --- scoring and output ------------------------------------------------------------------------------


def test_the_local_engine_writes_parquet_records_failures_and_resumes(
    tmp_path: Path, catalogue: Path, scorer: Scorer
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "\n".join(
            json.dumps(row)
            for row in [
                {"id": "range", "path": str(catalogue / "rock/a.wav"), "offset_s": 1.0, "duration_s": 2.0},
                {"id": "gone", "path": str(catalogue / "nope.wav")},
                {"id": "late", "path": str(catalogue / "jazz/c.wav"), "offset_s": 60},
                {"id": "tiny", "path": str(catalogue / "jazz/c.wav"), "offset_s": 2.4},
                {"id": "bad", "path": str(catalogue / "jazz/c.wav"), "offset_s": "x"},
            ]
        )
        + "\n"
    )
    out = tmp_path / "out"
    stats = run_local(
        scorer, iter_tracks([catalogue, manifest]), OutputFolder(out, "parquet", part_rows=2), workers=2
    )
    assert (stats.done, stats.failed, stats.skipped) == (4, 5, 0)
    table = pq.read_table(out)  # the bookkeeping files do not stop the folder reading as one dataset
    assert table.schema.equals(SCHEMA)
    assert sorted(table.column("id").to_pylist()) == ["jazz/c.wav", "range", "rock/a.wav", "rock/live/b.flac"]
    assert len(list(out.glob("part-*.parquet"))) == 2  # parts of <= 2 rows
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["range"]["num_frames"] == 4
    assert rows["range"]["start_s"] == [1.0, 1.5, 2.0, 2.5]
    assert rows["range"]["duration_s"] == pytest.approx(2.0)
    assert rows["rock/live/b.flac"]["num_frames"] == 6  # 3.2 s at 44.1 kHz: whole 0.5 s frames
    assert rows["rock/a.wav"]["model_name"] == "tiny"
    assert rows["rock/a.wav"]["sample_rate"] == 16_000
    row = rows["jazz/c.wav"]
    emotion = np.column_stack([row["arousal"], row["valence"]])
    assert row["arousal_mean"] == pytest.approx(emotion[:, 0].mean())
    assert row["quadrant"] in {"Q1", "Q2", "Q3", "Q4"}
    codes = {e["id"]: (e["status"], e["code"]) for e in read_errors(out)}
    assert codes == {
        "jazz/broken.wav": (415, "unsupported_audio"),
        "gone": (404, "not_found"),
        "late": (422, "invalid_request"),  # offset past the end
        "tiny": (422, "audio_too_short"),  # less than one window left
        "bad": (422, "invalid_request"),
    }

    again = run_local(scorer, iter_tracks([catalogue, manifest]), OutputFolder(out, "parquet", 2), workers=2)
    assert (again.done, again.skipped, again.failed) == (0, 4, 5)  # failures are retried, and fail again
    assert pq.read_table(out).num_rows == 4


def test_an_interrupted_run_leaves_whole_parts_and_a_rerun_finishes_it(
    tmp_path: Path, catalogue: Path, scorer: Scorer
) -> None:
    out = tmp_path / "out"
    first = run_local(scorer, iter_tracks([catalogue]), OutputFolder(out, "jsonl", 1), workers=1, limit=2)
    assert first.done + first.failed == 2
    (out / ".part-000009.jsonl.tmp").write_text('{"id": "half a part')  # what a kill mid-write leaves
    folder = OutputFolder(out, "jsonl", 1)
    assert not list(out.glob(".*.tmp"))
    second = run_local(scorer, iter_tracks([catalogue]), folder, workers=2)
    ids = [
        json.loads(line)["id"]
        for p in sorted(out.glob("part-*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    assert sorted(ids) == ["jazz/c.wav", "rock/a.wav", "rock/live/b.flac"]
    assert second.skipped == first.done


def test_the_engine_keeps_a_bounded_window_of_tracks_in_flight(
    tmp_path: Path, catalogue: Path, scorer: Scorer
) -> None:
    pulled, finished, ahead = [0], [0], []
    wav = str(catalogue / "jazz/c.wav")

    def endless() -> Iterator[Track]:
        for i in range(40):  # stands for a catalogue far larger than memory
            pulled[0] += 1
            ahead.append(pulled[0] - finished[0])
            yield Track(f"t{i}", wav)

    def progress(n: int, _: float) -> None:
        finished[0] += n

    stats = run_local(
        scorer,
        endless(),
        OutputFolder(tmp_path / "o", "parquet", 7),
        workers=2,
        progress=progress,
    )
    assert stats.done == 40
    assert max(ahead) <= 2 * 2 + 1  # the window (2 x workers) plus the one being read


def test_done_ids_remember_ids_in_8_bytes_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DoneIds, "_MERGE_AT", 4)
    done = DoneIds(["a", "b"])
    for i in range(10):
        done.add(f"n{i}")
    assert len(done) == 12
    assert "a" in done
    assert "n9" in done
    assert "n3" in done
    assert "c" not in done
    assert 3 not in done
    assert done._sorted.dtype == np.uint64
    assert done._sorted.size >= 8
    assert output_module.id_hash("a") != output_module.id_hash("b")


# --- the same numbers as the HTTP route ----------------------------------------------------------------


def test_scores_equal_the_http_routes_for_the_same_file(
    tmp_path: Path, catalogue: Path, served_model: Path, scorer: Scorer
) -> None:
    path = catalogue / "rock/live/b.flac"
    out = tmp_path / "out"
    run_local(scorer, [Track("b", str(path), 0.5, 2.0)], OutputFolder(out, "parquet"), workers=1)
    row = pq.read_table(out).to_pylist()[0]
    with serving(served_model) as url:
        response = httpx.post(
            f"{url}/v1/predict",
            params={"offset_s": 0.5, "duration_s": 2.0},
            files={"file": ("b.flac", path.read_bytes())},
            timeout=60,
        )
    body = response.json()
    assert response.status_code == 200
    assert [f["arousal"] for f in body["frames"]] == row["arousal"]
    assert [f["valence"] for f in body["frames"]] == row["valence"]
    assert [f["start_s"] for f in body["frames"]] == row["start_s"]
    assert body["input_gain_db"] == pytest.approx(row["input_gain_db"])
    assert body["summary"]["quadrant"] == row["quadrant"]


# --- the console script -----------------------------------------------------------------------------------


def test_the_cli_scores_resumes_limits_and_summarises(
    tmp_path: Path,
    catalogue: Path,
    served_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MER_MODEL_PATH", str(served_model))
    out = tmp_path / "scores"
    assert main([str(catalogue), "--out", str(out), "--limit", "2", "--workers", "2", "--no-progress"]) == 0
    first = json.loads((out / SUMMARY).read_text())
    assert first["done"] + first["failed"] == 2
    assert "done" in capsys.readouterr().err
    assert main([str(catalogue), "--out", str(out), "--no-progress"]) == 0
    second = json.loads((out / SUMMARY).read_text())
    assert second["skipped"] == first["done"]
    assert pq.read_table(out).num_rows == 3
    assert second["failures_by_code"] == {"unsupported_audio": 1}
    assert second["audio_hours"] > 0
    assert second["x_realtime"] > 0

    assert main([str(tmp_path / "nothing-here"), "--out", str(out)]) == 2
    assert "no such input" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert main([str(catalogue), "--out", str(tmp_path / "a-file")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert main([str(catalogue), "--out", str(tmp_path / "o2"), "--model", str(tmp_path / "none.onnx")]) == 2
    assert "model_not_ready" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(catalogue), "--out", str(out), "--workers", "0"])
