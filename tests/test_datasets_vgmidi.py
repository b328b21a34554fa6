from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import mido
import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from model_export.datasets import vgmidi

MIDI_A = "Series_NES_Game_Tempo Change.mid"
MIDI_B = "Series_SNES_Game_Waltz.mid"


def _notes(track: mido.MidiTrack, quarters: int, ticks_per_beat: int) -> None:
    track.append(mido.Message("program_change", program=0, time=0))
    for q in range(quarters):
        track.append(mido.Message("note_on", note=60 + q % 12, velocity=90, time=0))
        track.append(mido.Message("note_off", note=60 + q % 12, velocity=0, time=ticks_per_beat))


def write_midi_a(path: Path) -> None:
    """Type 1, 3/4 time, 120 BPM for 8 quarters then 60 BPM: 16 quarters of notes, ends at 12.5 s."""
    mid = mido.MidiFile(type=1, ticks_per_beat=480)
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0))
    meta.append(mido.MetaMessage("set_tempo", tempo=500_000, time=0))
    meta.append(mido.MetaMessage("set_tempo", tempo=1_000_000, time=8 * 480))
    meta.append(mido.MetaMessage("end_of_track", time=0))
    notes = mido.MidiTrack()
    _notes(notes, 16, 480)
    notes.append(mido.MetaMessage("end_of_track", time=240))  # half a quarter of silence at 60 BPM
    mid.tracks += [meta, notes]
    mid.save(str(path))


def write_midi_b(path: Path) -> None:
    """Type 0, 3/4 time, constant 100 BPM: 24 quarters = 6 four-quarter units = 14.4 s."""
    mid = mido.MidiFile(type=0, ticks_per_beat=96)
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0))
    track.append(mido.MetaMessage("set_tempo", tempo=600_000, time=0))
    _notes(track, 24, 96)
    track.append(mido.MetaMessage("end_of_track", time=0))
    mid.tracks.append(track)
    mid.save(str(path))


def _listener(arousal: list[float], valence: list[float]) -> dict[str, Any]:
    return {"age": "21-25", "arousal": arousal, "valence": valence, "gender": "Female", "musicianship": 1}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("vgmidi")
    (base / "midi").mkdir()
    (base / "annotations").mkdir()
    write_midi_a(base / "midi" / MIDI_A)
    write_midi_b(base / "midi" / MIDI_B)
    round1 = {
        "pieces": {
            # Round 1 stores whole seconds: 12 for a 12.5 s rendition.
            "piece0": {"audio": "audio/a.wav", "duration": 12, "measures": 4, "midi": MIDI_A, "name": "A"},
        },
        "annotations": {
            "piece0_1": _listener([0.1, 0.2, 0.3, 0.4], [-0.1, -0.2, -0.3, -0.4]),
            # One value too long: cut.
            "piece0_2": _listener([0.3, 0.4, 0.5, 0.6, 0.9], [-0.3, -0.4, -0.5, -0.6, -0.9]),
            # Wrong length: ignored.
            "piece0_3": _listener([1.0, 1.0], [1.0, 1.0]),
            # A piece without metadata: ignored.
            "piece7_1": _listener([0.5] * 4, [0.5] * 4),
        },
    }
    round2 = {
        "pieces": {
            # Ids restart: this piece0 is another piece.
            "piece0": {"audio": "audio/b.wav", "duration": 14.4, "measures": 6, "midi": MIDI_B, "name": "B"},
            # The same MIDI as round 1's piece0, annotated again.
            "piece1": {"audio": "audio/a.wav", "duration": 12.5, "measures": 4, "midi": MIDI_A, "name": "A"},
        },
        "annotations": {
            "piece0_1": _listener([-0.5, -0.3, -0.1, 0.1, 0.3, 0.5], [0.6, 0.4, 0.2, 0.0, -0.2, -0.4]),
            "piece1_1": _listener([0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, -1.0]),
        },
    }
    (base / vgmidi.ANNOTATION_FILES[0]).write_text(json.dumps(round1), encoding="utf-8")
    (base / vgmidi.ANNOTATION_FILES[1]).write_text(json.dumps(round2), encoding="utf-8")
    return base


def test_read_pieces_means_cuts_and_ignores(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        pieces = {p.key: p for p in vgmidi.read_pieces(root)}
    assert sorted(pieces) == ["vgmidi_raw_1/piece0", "vgmidi_raw_2/piece0", "vgmidi_raw_2/piece1"]
    a = pieces["vgmidi_raw_1/piece0"]
    assert a.listeners == 2
    np.testing.assert_allclose(a.arousal, [0.2, 0.3, 0.4, 0.5], atol=1e-6)
    np.testing.assert_allclose(a.valence, [-0.2, -0.3, -0.4, -0.5], atol=1e-6)
    assert pieces["vgmidi_raw_2/piece0"].midi == MIDI_B
    assert "without metadata (piece7)" in caplog.text
    assert "cut 1 listener entries" in caplog.text
    assert "ignored 1 listener entries of the wrong length" in caplog.text


def test_tempo_map_handles_tempo_changes(root: Path) -> None:
    tempo = vgmidi.read_tempo_map(root / "midi" / MIDI_A)
    assert tempo.length_s == pytest.approx(12.5)
    assert tempo.seconds([0, 480, 8 * 480, 9 * 480]).tolist() == pytest.approx([0.0, 0.5, 4.0, 5.0])
    # Four quarter notes per measure whatever the 3/4 signature says.
    bounds = vgmidi.measure_boundaries_tempo_map(tempo, 4)
    assert bounds.tolist() == pytest.approx([0.0, 2.0, 4.0, 8.0, 12.0])


def test_tool_timing_uses_equal_slices_of_the_rendition(root: Path, tmp_path: Path) -> None:
    clips = vgmidi.load(root, tmp_path, render_audio=False)
    clip = next(c for c in clips if c.clip_id.endswith("[vgmidi_raw_1]"))
    assert clip.offset_s == 0.0
    assert clip.group == MIDI_A
    # Stored duration 12 is a truncated 12.5 (the MIDI's length): slices of 12.5 / 4 = 3.125 s.
    assert clip.num_frames == 25
    arousal = clip.targets[:, 0]
    expected = {0: 0.2, 5: 0.2, 6: 0.3, 11: 0.3, 12: 0.4, 18: 0.5, 24: 0.5}  # frame 5 ends 3.0 s < 3.125
    for k, value in expected.items():
        assert arousal[k] == pytest.approx(value), k
    assert clip.targets[6, 1] == pytest.approx(-0.3)


def test_tempo_map_timing_and_frame_end_rule(root: Path, tmp_path: Path) -> None:
    clips = vgmidi.load(root, tmp_path, render_audio=False, timing="tempo_map")
    clip = next(c for c in clips if c.clip_id.endswith("[vgmidi_raw_1]"))
    assert clip.num_frames == 24  # measures end at 12.0 s
    arousal = clip.targets[:, 0]
    # Frame 3 is [1.5, 2.0): it ends on the boundary and lies wholly in measure 0.
    expected = {3: 0.2, 4: 0.3, 7: 0.3, 8: 0.4, 15: 0.4, 16: 0.5, 23: 0.5}
    for k, value in expected.items():
        assert arousal[k] == pytest.approx(value), k


def test_constant_tempo_timings_agree_and_rounds_are_grouped(root: Path, tmp_path: Path) -> None:
    tool = {c.clip_id: c for c in vgmidi.load(root, tmp_path, render_audio=False)}
    tempo = {c.clip_id: c for c in vgmidi.load(root, tmp_path, render_audio=False, timing="tempo_map")}
    waltz = Path(MIDI_B).stem
    assert tool[waltz].num_frames == 28  # 14.4 s
    np.testing.assert_array_equal(tool[waltz].targets, tempo[waltz].targets)
    # 2.4 s per measure: frames 0-3 (ending up to 2.0 s) and frame 4 (ending 2.5 s).
    assert tool[waltz].targets[3, 0] == pytest.approx(-0.5)
    assert tool[waltz].targets[4, 0] == pytest.approx(-0.3)
    twice = [c for c in tool.values() if c.group == MIDI_A]
    assert len(twice) == 2
    assert len({c.clip_id for c in twice}) == 2
    assert len({c.audio_path for c in twice}) == 1  # one render serves both rounds


def test_frame_labels_drops_frames_past_the_last_measure() -> None:
    labels = vgmidi.frame_labels([0.0, 1.0, 2.2], np.array([[1.0], [2.0]]))
    assert labels[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0]  # 2.2 s: 4 complete frames


def test_listener_duration() -> None:
    piece = vgmidi.Piece("f/p", "x.mid", "x", 4, 12.0, np.zeros(4, np.float32), np.zeros(4, np.float32), 1)
    assert vgmidi.listener_duration_s(piece, 12.7) == 12.7
    assert vgmidi.listener_duration_s(piece, 13.2) == 12.0  # not a truncation: keep what is stored


def test_peak_limit_and_loudness_normalisation() -> None:
    sr = 16_000
    t = np.arange(10 * sr) / sr
    rng = np.random.default_rng(0)
    quiet = 0.01 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.3 * t))
    quiet[::4000] += 0.2 * rng.choice([-1, 1], size=quiet[::4000].size)  # sparse clicks: big crest
    stereo = np.stack([quiet, 0.8 * quiet], axis=1)
    out, report = vgmidi.normalise_loudness(stereo, sr, target_lufs=-14.0, peak_dbfs=-1.0)
    ceiling = 10 ** (-1 / 20)
    assert np.abs(out).max() <= ceiling + 1e-12
    assert pyloudnorm.Meter(sr).integrated_loudness(out) == pytest.approx(-14.0, abs=0.2)
    assert report.lufs_in < -30
    assert report.lufs_out == pytest.approx(-14.0, abs=0.2)
    limited = vgmidi.peak_limit(stereo * 50, sr, 0.5)
    assert np.abs(limited).max() <= 0.5 + 1e-12
    untouched = vgmidi.peak_limit(stereo, sr, 0.9)
    np.testing.assert_array_equal(untouched, stereo)


def test_silence_is_left_alone() -> None:
    out, report = vgmidi.normalise_loudness(np.zeros((16_000, 2)), 16_000)
    assert not np.any(out)
    assert report.gain_db == 0.0


def test_setup_installs_with_apt_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    monkeypatch.setattr(vgmidi.rendering, "find_soundfont", lambda: None)
    monkeypatch.setattr(vgmidi.rendering, "ALT_SOUNDFONT", Path("/nonexistent/TimGM6mb.sf2"))
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr("subprocess.run", lambda cmd, **kw: calls.append(cmd))
    vgmidi.setup()
    assert calls == [
        ["apt-get", "update"],
        [
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            "fluidsynth",
            "fluid-soundfont-gm",
            "timgm6mb-soundfont",
        ],
    ]
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(RuntimeError, match="apt-get install"):
        vgmidi.setup()


def test_render_many_refuses_without_fluidsynth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    job = vgmidi.RenderJob(tmp_path / "x.mid", tmp_path / "x.flac")
    with pytest.raises(RuntimeError, match="fluidsynth"):
        vgmidi.render_many([job])


needs_fluidsynth = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or vgmidi.find_soundfont() is None,
    reason="fluidsynth and fluid-soundfont-gm not installed (CI installs them; see vgmidi.setup)",
)


@needs_fluidsynth
def test_render_normalise_and_resume(root: Path, tmp_path: Path) -> None:
    clips = vgmidi.load(root, tmp_path, sample_rate=16_000, workers=2)
    by_id = {c.clip_id: c for c in clips}
    waltz = by_id[Path(MIDI_B).stem]
    info = sf.info(str(waltz.audio_path))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16_000, 2)
    assert tmp_path in waltz.audio_path.parents
    assert info.duration >= 14.4 + vgmidi.TAIL_S - 1e-3
    audio, sr = sf.read(str(waltz.audio_path))
    assert np.abs(audio).max() <= 10 ** (-1 / 20) + 1 / 32768
    assert pyloudnorm.Meter(sr).integrated_loudness(audio) == pytest.approx(-14.0, abs=0.5)
    assert waltz.num_frames == 28
    stamps = {c.audio_path: c.audio_path.stat().st_mtime_ns for c in clips}
    again = vgmidi.load(root, tmp_path, sample_rate=16_000, workers=2)
    assert {c.audio_path: c.audio_path.stat().st_mtime_ns for c in again} == stamps  # nothing re-rendered


@needs_fluidsynth
def test_render_reports_fluidsynth_failure(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mid"
    bogus.write_bytes(b"not a midi file")
    with pytest.raises(RuntimeError, match="fluidsynth failed"):
        vgmidi.render(bogus, tmp_path / "out.wav")


def test_variations_are_seeded_per_piece_and_never_the_identity() -> None:
    a = vgmidi.draw_variations("a.mid", 50, seed=0)
    assert a == vgmidi.draw_variations("a.mid", 50, seed=0)
    assert a != vgmidi.draw_variations("b.mid", 50, seed=0)
    assert a != vgmidi.draw_variations("a.mid", 50, seed=1)
    assert vgmidi.draw_variations("a.mid", 3) == a[:3]  # adding renditions keeps the earlier ones
    assert not any(v.is_identity for v in a)
    assert vgmidi.Variation().is_identity
    assert vgmidi.Variation().changes == frozenset()
    assert vgmidi.Variation(hall_reverb=True, noise_snr_db=30.0).changes == {"reverb", "noise"}
    assert vgmidi.Variation().describe() == "plain"
    # Each change is drawn: all four kinds occur, and their SNRs stay within the documented range.
    assert any(v.soundfont == vgmidi.ALT_SOUNDFONT for v in a)
    assert {v.program for v in a} == {None, *vgmidi.AUGMENT_PROGRAMS}
    assert any(v.hall_reverb for v in a)
    assert not all(v.hall_reverb for v in a)
    snrs = [v.noise_snr_db for v in a if v.noise_snr_db is not None]
    assert snrs
    assert all(vgmidi.NOISE_SNR_DB[0] <= s <= vgmidi.NOISE_SNR_DB[1] for s in snrs)
    v = vgmidi.Variation(soundfont=vgmidi.ALT_SOUNDFONT, program=4, hall_reverb=True, noise_snr_db=31.4)
    assert v.describe() == "TimGM6mb+program4+hall+snr31dB"


def test_set_program_changes_melodic_channels_only(root: Path, tmp_path: Path) -> None:
    src = tmp_path / "src.mid"
    mid = mido.MidiFile(type=1, ticks_per_beat=96)
    melodic, drums, silent = mido.MidiTrack(), mido.MidiTrack(), mido.MidiTrack()
    melodic.append(mido.Message("program_change", channel=0, program=0, time=0))
    melodic.append(mido.Message("note_on", channel=0, note=60, velocity=80, time=0))
    melodic.append(mido.Message("note_on", channel=1, note=64, velocity=70, time=0))  # default program
    melodic.append(mido.Message("note_off", channel=0, note=60, velocity=0, time=96))
    drums.append(mido.Message("program_change", channel=9, program=0, time=0))
    drums.append(mido.Message("note_on", channel=9, note=36, velocity=100, time=0))
    mid.tracks += [melodic, drums, silent]
    mid.save(str(src))
    out = tmp_path / "out.mid"
    vgmidi.set_program(src, out, 4)
    changes = [
        (m.channel, m.program)
        for t in mido.MidiFile(str(out)).tracks
        for m in t
        if m.type == "program_change"
    ]
    assert sorted(set(changes)) == [(0, 4), (1, 4), (9, 0)]
    notes = [m for t in mido.MidiFile(str(out)).tracks for m in t if m.type in ("note_on", "note_off")]
    original = [m for t in mid.tracks for m in t if m.type in ("note_on", "note_off")]
    assert notes == original  # notes, velocities and timing untouched
    with pytest.raises(ValueError, match=r"0\.\.127"):
        vgmidi.set_program(src, out, 128)


def test_pink_noise_at_the_requested_snr() -> None:
    rng = np.random.default_rng(0)
    x = np.stack([np.sin(np.arange(48_000) * 0.05), 0.5 * np.sin(np.arange(48_000) * 0.07)], axis=1)
    y = vgmidi.add_noise(x, 30.0, seed=3)
    noise = y - x
    snr = 10 * np.log10(np.mean(np.square(x)) / np.mean(np.square(noise)))
    assert snr == pytest.approx(30.0, abs=0.01)
    assert not np.allclose(noise[:, 0], noise[:, 1])  # independent per channel
    np.testing.assert_array_equal(y, vgmidi.add_noise(x, 30.0, seed=3))
    # 1/f: each octave holds about the same power, so the low octave is far above white noise's share.
    spec = np.abs(np.fft.rfft(vgmidi.pink_noise(1 << 16, rng))) ** 2
    low, high = spec[64:128].sum(), spec[16_384:32_768].sum()
    assert low / high == pytest.approx(1.0, rel=0.3)
    silent = np.zeros((100, 2))
    np.testing.assert_array_equal(vgmidi.add_noise(silent, 30.0, seed=0), silent)


needs_alt_soundfont = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or not vgmidi.ALT_SOUNDFONT.is_file(),
    reason="fluidsynth and timgm6mb-soundfont not installed (CI installs them; see vgmidi.setup)",
)


@needs_alt_soundfont
def test_augmented_renditions_share_labels_and_group(root: Path, tmp_path: Path) -> None:
    clips = vgmidi.load(root, tmp_path, sample_rate=16_000, workers=2, augment=2)
    plain = [c for c in clips if not c.variant_of]
    variants = [c for c in clips if c.variant_of]
    assert len(plain) == 3
    assert len(variants) == 6
    by_id = {c.clip_id: c for c in plain}
    for v in variants:
        original = by_id[v.variant_of]
        assert v.clip_id.startswith(original.clip_id + " ~aug")
        assert v.group == original.group
        np.testing.assert_array_equal(v.targets, original.targets[: v.num_frames])
        assert v.num_frames == original.num_frames  # renders are padded to the labelled span
        assert v.audio_path.parent != original.audio_path.parent  # a folder of their own
        a, sr = sf.read(str(original.audio_path))
        b, _ = sf.read(str(v.audio_path))
        n = min(len(a), len(b))
        assert np.mean(np.abs(a[:n] - b[:n])) > 1e-3  # really another rendition
        assert pyloudnorm.Meter(sr).integrated_loudness(b) == pytest.approx(-14.0, abs=0.5)
    # The same draw on a second call: nothing re-rendered.
    stamps = {c.audio_path: c.audio_path.stat().st_mtime_ns for c in clips}
    again = vgmidi.load(root, tmp_path, sample_rate=16_000, workers=2, augment=2)
    assert {c.audio_path: c.audio_path.stat().st_mtime_ns for c in again} == stamps
    with pytest.raises(ValueError, match="augment"):
        vgmidi.load(root, tmp_path, sample_rate=16_000, augment=-1)
    # Ablation: leaving a kind of change out drops the renditions that apply it, and keeps the
    # others as the very same files (nothing re-rendered).
    for exclude in (["reverb"], "reverb", ["reverb", "soundfont"]):
        kept = [
            c
            for c in vgmidi.load(root, tmp_path, sample_rate=16_000, augment=2, augment_exclude=exclude)
            if c.variant_of
        ]
        names = {exclude} if isinstance(exclude, str) else set(exclude)
        expected = {
            (v.clip_id, v.audio_path)
            for v in variants
            if not vgmidi.draw_variations(v.group, 2)[int(v.clip_id.rpartition("~aug")[2]) - 1].changes
            & names
        }
        assert {(c.clip_id, c.audio_path) for c in kept} == expected
        assert 0 < len(kept) < len(variants)  # this fixture's draws: some apply reverb, some do not
        assert {c.audio_path: c.audio_path.stat().st_mtime_ns for c in kept}.items() <= stamps.items()
    with pytest.raises(ValueError, match="unknown augment_exclude"):
        vgmidi.load(root, tmp_path, sample_rate=16_000, augment=2, augment_exclude=["gain"])


@needs_alt_soundfont
def test_each_variation_changes_the_rendition(root: Path, tmp_path: Path) -> None:
    midi = root / "midi" / MIDI_B
    renders = {}
    for name, var in {
        "plain": vgmidi.Variation(),
        "font": vgmidi.Variation(soundfont=vgmidi.ALT_SOUNDFONT),
        "program": vgmidi.Variation(program=4),
        "hall": vgmidi.Variation(hall_reverb=True),
    }.items():
        out = tmp_path / f"{name}.flac"
        vgmidi.render_to_cache(vgmidi.RenderJob(midi, out, 15.0, var), sample_rate=16_000)
        renders[name], _ = sf.read(str(out))
    for name in ("font", "program", "hall"):
        n = min(len(renders[name]), len(renders["plain"]))
        assert np.mean(np.abs(renders[name][:n] - renders["plain"][:n])) > 1e-3, name
    # Reverb lengthens the decay: more energy in the quiet tail after the last note (14.4 s).
    tail = slice(int(14.45 * 16_000), int(14.9 * 16_000))
    assert np.mean(np.square(renders["hall"][tail])) > 2 * np.mean(np.square(renders["plain"][tail]))


@needs_alt_soundfont
def test_cli_train_with_augmentation_records_it_in_the_checkpoint(root: Path, tmp_path: Path) -> None:
    from model_export.__main__ import main
    from model_export.checkpoint import load_checkpoint
    from model_export.splits import validation_split

    out = tmp_path / "m.pt"
    argv = ["train", "--dataset", "vgmidi", "--root", str(root), "--cache", str(tmp_path), "--rate", "16000"]
    argv += ["--option", "augment=1", "--epochs", "1", "--threads", "1", "--workers", "2", "--out", str(out)]
    argv += ["--model-option", "hidden_sizes=[8]", "--model-option", "attention_window=4"]
    assert main(argv) == 0
    _, _, meta = load_checkpoint(out)
    aug = meta["augmentation"]
    # Three clips in two groups: one group is held out for early stopping, the other trains with
    # one variant per clip; the validation group's variants are not used.
    clips = [c for c in vgmidi.load(root, tmp_path / "vgmidi", sample_rate=16_000) if not c.variant_of]
    train_idx, val_idx = validation_split([c.group for c in clips], 0.1, 0)
    assert val_idx
    assert aug["variant_clips"] == len(train_idx)
    assert aug["per_piece"] == 1
    assert aug["version"] == vgmidi.AUGMENT_VERSION
    assert "TimGM6mb" in aug["changes"]
    assert aug["excluded"] == []
    assert meta["clips"] == 3  # originals only
