"""Benchmark: one-pass feature extraction against the naive one-call-per-window reference.

What is measured, per analysis rate and clip duration, on deterministic synthetic music (harmonic
notes with onsets, chords, loudness changes and a little noise; mono float32):

* ``one-pass``: :meth:`app.core.features.FeatureExtractor.extract`, i.e. ComParE_2016 functionals of every
  complete 500 ms window in a single openSMILE run (``frameMode = fixed``).
* ``naive``: one stock ``opensmile.Smile(ComParE_2016, Functionals).process_signal`` call per 500 ms
  window, each call given only that window's samples (functionals over the whole input).

Both Smile objects are built once, outside the timed region. Wall time is the median of ``--repeats``
runs (``time.perf_counter``); the first run's output is used for the comparison.
Extraction is single-threaded (the ``cpu/wall`` column checks this), so the real-time factor per core
is simply ``audio seconds / wall seconds``. The two feature matrices differ by design (in one pass the
low-level descriptors see their neighbours across window edges), so their difference is reported to
show that they are not interchangeable. Peak RSS is taken for this process (``ru_maxrss``) and, per
method, in a fresh child process (``VmHWM``) that synthesises its clip and builds its extractor
(``base``) and then extracts once (``peak``).

Run from the repository root::

    .venv/bin/python bench/extract.py                 # defaults: 5 repeats, 30 s and 45 s, 44.1/16 kHz
    .venv/bin/python bench/extract.py --repeats 3 --durations 30 --rates 16000

The expectations checked at the end (one-pass >= 18x real time per core at 44.1 kHz and >= 1.8x faster
than the naive reference) print PASS or BELOW; the script exits 0 either way, since it is a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import opensmile

from app.core.contract import FeatureConfig
from app.core.features import FeatureExtractor, opensmile_version
from app.core.types import FloatArray

#: Expectations checked by the verdict line.
EXPECTED_RTF_44K = 18.0
EXPECTED_SPEEDUP = 1.8
VERDICT_RATE = 44_100
SEED = 20_240_501


@dataclass(frozen=True)
class Result:
    """Measurements for one (rate, duration) pair.

    Attributes:
        rate: Analysis sample rate in Hz.
        duration_s: Clip length in seconds.
        frames_one: Rows returned by the one-pass extractor.
        frames_naive: Rows returned by the naive reference.
        wall_one: Median wall seconds of one-pass extraction.
        wall_naive: Median wall seconds of the naive reference.
        cpu_one: Median process CPU seconds of one-pass extraction.
        cpu_naive: Median process CPU seconds of the naive reference.
        max_abs: Largest absolute difference between the two feature matrices.
        rel_median: Median element-wise relative difference.
        rel_p95: 95th percentile of the element-wise relative difference.
        frac_rel_1pct: Share of elements whose relative difference exceeds 1 %.
        naive_nonfinite: Non-finite values in the naive matrix (the one-pass path never returns any).
        rss_one: ``(base, peak)`` KiB of a fresh process running one-pass extraction.
        rss_naive: ``(base, peak)`` KiB of a fresh process running the naive reference.
    """

    rate: int
    duration_s: float
    frames_one: int
    frames_naive: int
    wall_one: float
    wall_naive: float
    cpu_one: float
    cpu_naive: float
    max_abs: float
    rel_median: float
    rel_p95: float
    frac_rel_1pct: float
    naive_nonfinite: int
    rss_one: tuple[int, int] = (0, 0)
    rss_naive: tuple[int, int] = (0, 0)

    @property
    def rtf_one(self) -> float:
        """Real-time factor per core of one-pass extraction."""
        return self.duration_s / self.wall_one

    @property
    def rtf_naive(self) -> float:
        """Real-time factor per core of the naive reference."""
        return self.duration_s / self.wall_naive

    @property
    def speedup(self) -> float:
        """How many times faster one-pass is than the naive reference."""
        return self.wall_naive / self.wall_one


def synth_music(duration_s: float, sample_rate: int, seed: int = SEED) -> FloatArray:
    """Synthesise a deterministic, music-like mono clip.

    The note events depend only on ``seed`` (not on the rate), so every rate analyses the same music;
    a shorter clip is a prefix of a longer one.

    Args:
        duration_s: Length in seconds.
        sample_rate: Sample rate in Hz.
        seed: Seed of the note events and the noise.

    Returns:
        float32 samples with peak 0.9 (clear of openSMILE's int16 clipping).
    """
    rng = np.random.default_rng(seed)
    n = round(duration_s * sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    out = np.zeros(n, dtype=np.float64)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])  # major scale, semitones above the tonic
    nyquist = sample_rate / 2

    def add_note(start: float, length: float, midi: float, amp: float, decay: float) -> None:
        i0 = int(start * sample_rate)
        i1 = min(n, i0 + int(length * sample_rate))
        if i0 >= i1:
            return
        tt = t[i0:i1] - t[i0]
        f0 = 440.0 * 2.0 ** ((midi - 69) / 12)
        # 5 ms attack so onsets are sharp but click-free, then an exponential decay like a plucked string.
        env = np.minimum(tt / 0.005, 1.0) * np.exp(-tt / decay)
        tone = np.zeros_like(tt)
        for k in range(1, 9):
            if k * f0 < nyquist:
                tone += np.sin(2 * np.pi * k * f0 * tt + rng.uniform(0, 2 * np.pi)) / k**1.3
        out[i0:i1] += amp * env * tone

    # Melody: notes of random length with onsets, a few rests.
    pos = 0.0
    while pos < duration_s:
        length = float(rng.choice([0.125, 0.25, 0.25, 0.5, 0.75]))
        if rng.random() > 0.1:
            midi = 60 + 12 * int(rng.integers(0, 2)) + int(rng.choice(scale))
            add_note(pos, length * 1.5, midi, 0.5, decay=0.4)
        pos += length
    # Chords: a triad every 2 s on a I-IV-V-vi cycle, sustained, one octave down.
    roots = [48, 53, 55, 57]
    for bar, start in enumerate(np.arange(0.0, duration_s, 2.0)):
        root = roots[bar % len(roots)]
        third = 3 if root == 57 else 4
        for interval in (0, third, 7):
            add_note(float(start), 2.2, root + interval, 0.25, decay=1.5)
    # Loudness: slow crescendi and diminuendi (about 20 dB range) and a near-silent break mid-clip.
    loud = 0.55 + 0.45 * np.sin(2 * np.pi * t / 11.0 + 0.3)
    loud *= np.where((t > duration_s * 0.5) & (t < duration_s * 0.5 + 1.0), 0.05, 1.0)
    out *= loud
    out /= np.max(np.abs(out)) + 1e-12
    out += 10 ** (-45 / 20) * rng.standard_normal(n)
    out *= 0.9 / np.max(np.abs(out))
    return out.astype(np.float32)


def naive_smile() -> opensmile.Smile:
    """Stock ComParE_2016 functionals extractor: one row of functionals over its whole input."""
    return opensmile.Smile(
        feature_set=opensmile.FeatureSet.ComParE_2016,
        feature_level=opensmile.FeatureLevel.Functionals,
    )


def naive_extract(smile: opensmile.Smile, signal: FloatArray, sample_rate: int, window: int) -> FloatArray:
    """Naive reference: one ``process_signal`` call per complete window, on that window's samples only.

    Args:
        smile: A stock Smile object from :func:`naive_smile`.
        signal: Mono float32 samples.
        sample_rate: Sample rate of ``signal`` in Hz.
        window: Samples per window.

    Returns:
        ``(T, F)`` float32 features, one row per complete window (``T = len(signal) // window``).
    """
    rows = []
    for k in range(signal.size // window):
        frame = smile.process_signal(signal[k * window : (k + 1) * window], sample_rate)
        rows.append(frame.to_numpy(dtype=np.float32))
    return np.concatenate(rows, axis=0)


def time_it(fn: Callable[[], FloatArray], repeats: int) -> tuple[float, float, FloatArray]:
    """Median wall and CPU seconds of ``fn`` over ``repeats`` runs.

    There is no separate warm-up: every call re-parses openSMILE's configuration into a fresh native
    instance anyway, and the median absorbs a slow first run.

    Returns:
        ``(median wall s, median CPU s, output of the first run)``.
    """
    outs: list[FloatArray] = []
    walls, cpus = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        if not outs:
            outs.append(out)
    return statistics.median(walls), statistics.median(cpus), outs[0]


def compare(one: FloatArray, naive: FloatArray) -> tuple[float, float, float, float]:
    """Differences between the matrices over the rows both have (finite values of ``naive`` only).

    Returns:
        ``(max abs, median relative, p95 relative, share of elements with relative difference > 1 %)``,
        the relative difference being ``|a - b| / max(|a|, |b|)`` (0 where both are 0).
    """
    rows = min(one.shape[0], naive.shape[0])
    a = one[:rows].astype(np.float64)
    b = naive[:rows].astype(np.float64)
    ok = np.isfinite(b)
    diff = np.abs(a - b)[ok]
    scale = np.maximum(np.abs(a), np.abs(b))[ok]
    rel = np.divide(diff, scale, out=np.zeros_like(diff), where=scale > 0)
    return (
        float(diff.max()),
        float(np.median(rel)),
        float(np.percentile(rel, 95)),
        float(np.mean(rel > 0.01)),
    )


def peak_rss_kib() -> int:
    """Peak resident set size of this process in KiB.

    Linux carries ``ru_maxrss`` across ``execve``, so a child started from this (large) benchmark
    process would report the parent's peak; ``VmHWM`` belongs to the new address space and does not.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_in_child(method: str, rate: int, duration_s: float) -> tuple[int, int]:
    """Peak RSS of a fresh interpreter that runs ``method`` once.

    Returns:
        ``(base, peak)`` in KiB: ``ru_maxrss`` after imports, extractor construction and synthesis,
        and after one extraction.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method]
    cmd += ["--rates", str(rate), "--durations", str(duration_s)]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return int(data["base"]), int(data["peak"])


def child_main(method: str, rate: int, duration_s: float) -> None:
    """Entry point of the RSS child: print ``{"base": KiB, "peak": KiB}`` as the last stdout line."""
    config = FeatureConfig(sample_rate=rate)
    signal = synth_music(duration_s, rate)
    # Build the method's objects before the baseline reading so "peak - base" is extraction alone.
    fx = FeatureExtractor(config) if method == "one-pass" else None
    smile = naive_smile() if method == "naive" else None
    base = peak_rss_kib()
    if fx is not None:
        fx.extract(signal)
    else:
        naive_extract(smile, signal, rate, config.window_samples)
    peak = peak_rss_kib()
    print(json.dumps({"base": base, "peak": peak}))


def measure(rate: int, duration_s: float, repeats: int) -> Result:
    """Benchmark both methods on one synthetic clip and measure their per-process peak RSS."""
    config = FeatureConfig(sample_rate=rate)
    signal = synth_music(duration_s, rate)
    fx = FeatureExtractor(config)
    smile = naive_smile()
    wall_one, cpu_one, one = time_it(lambda: fx.extract(signal).values, repeats)
    wall_naive, cpu_naive, naive = time_it(
        lambda: naive_extract(smile, signal, rate, config.window_samples), repeats
    )
    max_abs, rel_median, rel_p95, frac = compare(one, naive)
    return Result(
        rate=rate,
        duration_s=duration_s,
        frames_one=one.shape[0],
        frames_naive=naive.shape[0],
        wall_one=wall_one,
        wall_naive=wall_naive,
        cpu_one=cpu_one,
        cpu_naive=cpu_naive,
        max_abs=max_abs,
        rel_median=rel_median,
        rel_p95=rel_p95,
        frac_rel_1pct=frac,
        naive_nonfinite=int(np.count_nonzero(~np.isfinite(naive))),
    )


def add_child_rss(results: list[Result]) -> list[Result]:
    """Fill in per-method peak RSS, measured in fresh child processes.

    The children run after all timings and side by side (one per CPU): memory does not depend on
    contention, and running them serially would add a third to the benchmark's runtime.
    """
    jobs = [(m, r.rate, r.duration_s) for r in results for m in ("one-pass", "naive")]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        rss = list(pool.map(lambda job: rss_in_child(*job), jobs))
    return [replace(r, rss_one=rss[2 * i], rss_naive=rss[2 * i + 1]) for i, r in enumerate(results)]


def mib(kib: int) -> str:
    """Format KiB (Linux ``ru_maxrss`` units) as MiB."""
    return f"{kib / 1024:.0f}"


def print_table(results: list[Result]) -> None:
    """Print the summary table, one row per (rate, duration)."""
    header = [
        "rate_Hz", "dur_s", "frames", "1pass_s", "naive_s", "1pass_RTF", "naive_RTF", "speedup",
        "cpu/wall(1p/nv)", "max_abs", "rel_med", "rel_p95", "rel>1%", "RSS_1pass", "RSS_naive",
    ]  # fmt: skip
    rows = []
    for r in results:
        frames = str(r.frames_one) if r.frames_one == r.frames_naive else f"{r.frames_one}/{r.frames_naive}"
        cpu_wall = f"{r.cpu_one / r.wall_one:.2f}/{r.cpu_naive / r.wall_naive:.2f}"
        rows.append([
            str(r.rate), f"{r.duration_s:g}", frames, f"{r.wall_one:.3f}", f"{r.wall_naive:.3f}",
            f"{r.rtf_one:.1f}x", f"{r.rtf_naive:.1f}x", f"{r.speedup:.2f}x", cpu_wall,
            f"{r.max_abs:.3g}", f"{r.rel_median:.2%}", f"{r.rel_p95:.1%}", f"{r.frac_rel_1pct:.1%}",
            f"{mib(r.rss_one[1])}({mib(r.rss_one[0])})", f"{mib(r.rss_naive[1])}({mib(r.rss_naive[0])})",
        ])  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for line in [header, *rows]:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))
    print(
        "RTF = audio s / wall s, per core (cpu/wall ~ 1.00: single-threaded); speedup = naive wall / "
        "1-pass wall;\nrel = |a-b|/max(|a|,|b|) element-wise; RSS = peak MiB of a fresh process per "
        "method (before extraction in brackets)."
    )


def verdict(results: list[Result]) -> str:
    """One line comparing the results at 44.1 kHz with the expectations (worst duration counts)."""
    at = [r for r in results if r.rate == VERDICT_RATE]
    if not at:
        return f"verdict: n/a (no {VERDICT_RATE} Hz rate measured)"
    rtf = min(r.rtf_one for r in at)
    speed = min(r.speedup for r in at)
    rtf_ok = "PASS" if rtf >= EXPECTED_RTF_44K else "BELOW"
    speed_ok = "PASS" if speed >= EXPECTED_SPEEDUP else "BELOW"
    return (
        f"verdict @ {VERDICT_RATE} Hz (worst duration): one-pass {rtf:.1f}x real time per core "
        f"(expect >= {EXPECTED_RTF_44K:g}x: {rtf_ok}); {speed:.2f}x faster than naive "
        f"(expect >= {EXPECTED_SPEEDUP:g}x: {speed_ok})"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (median reported)")
    parser.add_argument("--durations", type=float, nargs="+", default=[30.0, 45.0], help="clip seconds")
    parser.add_argument("--rates", type=int, nargs="+", default=[44_100, 16_000], help="analysis rates, Hz")
    parser.add_argument("--child", choices=["one-pass", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its report; returns the exit status (0 unless it crashed)."""
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args.rates[0], args.durations[0])
        return 0
    t0 = time.perf_counter()
    print(
        f"python {platform.python_version()}, opensmile {opensmile_version()}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}; repeats={args.repeats} (median)"
    )
    results = []
    for rate in args.rates:
        for duration in args.durations:
            r = measure(rate, duration, args.repeats)
            results.append(r)
            print(
                f"{rate} Hz, {duration:g} s: one-pass {r.wall_one:.3f} s ({r.rtf_one:.1f}x RT/core), "
                f"naive {r.wall_naive:.3f} s ({r.rtf_naive:.1f}x RT/core), one-pass {r.speedup:.2f}x "
                f"faster; frames {r.frames_one} vs {r.frames_naive}; max |diff| {r.max_abs:.3g}, "
                f"median rel {r.rel_median:.2%}; naive non-finite {r.naive_nonfinite}",
                flush=True,
            )
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = add_child_rss(results)
    print()
    print_table(results)
    print(
        f"this process (both methods, all clips): peak RSS {mib(own)} MiB; load avg "
        f"{os.getloadavg()[0]:.2f}; total {time.perf_counter() - t0:.1f} s"
    )
    contended = [r for r in results if min(r.cpu_one / r.wall_one, r.cpu_naive / r.wall_naive) < 0.9]
    if contended:
        # Single-threaded work that got < 90 % of a core waited for the CPU: other load skewed it.
        where = ", ".join(f"{r.rate} Hz/{r.duration_s:g} s" for r in contended)
        print(
            f"warning: cpu/wall < 0.90 at {where}: other load on the machine; those timings are pessimistic"
        )
    print(verdict(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
