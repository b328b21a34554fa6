"""Tests for app.serving.batcher and app.serving.pool: dynamic batches, bounded queues, draining, HTTP."""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.core.audio import decode
from app.core.errors import (
    InvalidFeaturesError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ShuttingDownError,
)
from app.core.features import FeatureExtractor
from app.core.predictor import Predictor
from app.serving.batcher import DynamicBatcher
from app.serving.memory import release_memory
from app.serving.pool import AudioBudget, WorkerPool
from model_export.testing import encode, synth_music
from tests.conftest import serving

F = 6373


@pytest.fixture(scope="module")
def predictor(served_model: Path) -> Predictor:
    return Predictor.load(served_model, providers="cpu", intra_op_threads=1)


def clip(frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Raw ComParE functionals span many magnitudes; the graph compresses them (signed log1p).
    return (rng.standard_normal((frames, F)) * 10 ** rng.uniform(-2, 3, F)).astype(np.float32)


def make_batcher(predictor: Predictor, **kwargs: float) -> tuple[DynamicBatcher, list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []
    options = {"max_batch": 8, "max_batch_frames": 4096, "max_wait_s": 0.05, "max_queue": 64, **kwargs}
    batcher = DynamicBatcher(
        predictor.predict_batch,
        max_batch=int(options["max_batch"]),
        max_batch_frames=int(options["max_batch_frames"]),
        max_wait_s=float(options["max_wait_s"]),
        max_queue=int(options["max_queue"]),
        observe=lambda size, frames, _: seen.append((size, frames)),
    )
    return batcher, seen


def test_concurrent_clips_are_batched_and_each_gets_its_own_result(predictor: Predictor) -> None:
    clips = [clip(t, seed=t) for t in (1, 5, 61, 17, 2, 30, 61, 8, 3, 44, 12, 61, 7, 9, 20, 1, 2, 3, 4, 5)]

    async def main() -> tuple[list[np.ndarray], list[tuple[int, int]]]:
        batcher, seen = make_batcher(predictor)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit([c]) for c in clips))
        await batcher.stop()
        return [r[0] for r in results], seen

    results, seen = asyncio.run(main())
    for c, y in zip(clips, results, strict=True):
        assert y.shape == (c.shape[0], 2)
        assert np.max(np.abs(y - predictor.predict(c))) <= 1e-5  # right padding changes nothing
    sizes = [size for size, _ in seen]
    assert sum(sizes) == len(clips)
    assert max(sizes) == 8  # max_batch
    assert len(sizes) == 3


def test_padded_frames_are_bounded_and_a_long_clip_runs_alone(predictor: Predictor) -> None:
    clips = [clip(10, 1), clip(10, 2), clip(10, 3), clip(80, 4), clip(10, 5)]

    async def main() -> list[tuple[int, int]]:
        batcher, seen = make_batcher(predictor, max_batch_frames=100, max_wait_s=0.2)
        await batcher.start()
        await asyncio.gather(*(batcher.submit([c]) for c in clips))
        await batcher.stop()
        return seen

    # In arrival order: three short clips (30 padded frames), the long one alone, then the last short one.
    assert asyncio.run(main()) == [(3, 30), (1, 80), (1, 10)]


def test_a_full_queue_refuses_at_once_and_admitted_work_completes(predictor: Predictor) -> None:
    async def main() -> None:
        batcher, _ = make_batcher(predictor, max_queue=2, max_wait_s=0.3)
        await batcher.start()
        admitted = asyncio.ensure_future(batcher.submit([clip(3, 1), clip(4, 2)]))
        await asyncio.sleep(0)  # let it queue its clips
        with pytest.raises(OverloadedError, match="queue is full") as info:
            await batcher.submit([clip(2, 3)])
        assert info.value.headers == {"Retry-After": "1"}
        with pytest.raises(PayloadTooLargeError, match="3 clips in one request"):
            await batcher.submit([clip(1, 4)] * 3)
        assert [y.shape for y in await admitted] == [(3, 2), (4, 2)]
        await batcher.stop()

    asyncio.run(main())


def test_clips_of_a_timed_out_request_never_reach_the_model(predictor: Predictor) -> None:
    async def main() -> list[tuple[int, int]]:
        batcher, seen = make_batcher(predictor, max_wait_s=0.3)
        await batcher.start()
        kept = asyncio.ensure_future(batcher.submit([clip(5, 1)]))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit([clip(7, 2)]), timeout=0.05)
        await kept
        assert batcher.queued == 0
        await batcher.stop()
        return seen

    assert asyncio.run(main()) == [(1, 5)]


def test_stop_finishes_queued_work_then_refuses_new_work(predictor: Predictor) -> None:
    async def main() -> None:
        batcher, _ = make_batcher(predictor, max_wait_s=0.2)
        await batcher.start()
        pending = asyncio.ensure_future(batcher.submit([clip(6, 1)]))
        await asyncio.sleep(0)
        await batcher.stop()
        assert pending.done()
        assert (await pending)[0].shape == (6, 2)
        with pytest.raises(ShuttingDownError):
            await batcher.submit([clip(1, 2)])

    asyncio.run(main())


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on(predictor: Predictor) -> None:
    async def main() -> None:
        batcher, _ = make_batcher(predictor, max_wait_s=0.1)
        await batcher.start()
        # Unvalidated input of the wrong width reaches the model: the whole batch fails, visibly.
        results = await asyncio.gather(
            batcher.submit([clip(3, 1)]),
            batcher.submit([np.zeros((3, 10), np.float32)]),
            return_exceptions=True,
        )
        assert all(isinstance(r, InvalidFeaturesError) for r in results)
        assert (await batcher.submit([clip(2, 2)]))[0].shape == (2, 2)
        await batcher.stop()

    asyncio.run(main())


# --- worker pool ----------------------------------------------------------------------------------------


def blocker() -> tuple[threading.Event, Callable[[], str]]:
    release = threading.Event()

    def work() -> str:
        assert release.wait(timeout=30)
        return "done"

    return release, work


def test_pool_bounds_the_calls_waiting_for_a_thread() -> None:
    async def main() -> None:
        pool = WorkerPool(workers=1, max_queue=1)
        release, work = blocker()
        running = asyncio.ensure_future(pool.run(work))
        while pool.busy == 0:
            await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(pool.run(lambda: "second"))
        await asyncio.sleep(0)
        assert pool.waiting == 1
        with pytest.raises(OverloadedError, match="1 requests are waiting"):
            await pool.run(lambda: "third")
        release.set()
        assert (await running, await waiting) == ("done", "second")
        assert (pool.waiting, pool.busy) == (0, 0)
        await pool.shutdown()
        with pytest.raises(ShuttingDownError):
            await pool.run(lambda: "late")

    asyncio.run(main())


def test_a_call_cancelled_before_it_started_frees_its_place() -> None:
    async def main() -> None:
        pool = WorkerPool(workers=1, max_queue=1)
        release, work = blocker()
        running = asyncio.ensure_future(pool.run(work))
        while pool.busy == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.run(lambda: "never"), timeout=0.05)
        assert pool.waiting == 0
        follow_up = asyncio.ensure_future(pool.run(lambda: "admitted"))
        release.set()
        assert (await running, await follow_up) == ("done", "admitted")
        await pool.shutdown()

    asyncio.run(main())


def test_chunks_of_one_call_spread_over_the_pool_and_come_back_in_order() -> None:
    async def main() -> None:
        pool = WorkerPool(workers=3, max_queue=4)
        threads: set[str] = set()

        def chunk(i: int) -> int:
            threads.add(threading.current_thread().name)
            time.sleep(0.02)
            return i * i

        def call() -> list[int]:
            return pool.chunk_runner().map(chunk, 12)

        assert await pool.run(call) == [i * i for i in range(12)]
        assert len(threads) >= 2  # the caller's thread and at least one of its two helpers
        assert await pool.run(lambda: pool.chunk_runner().map(chunk, 0)) == []
        assert (pool.waiting, pool.busy) == (0, 0)
        await pool.shutdown()

    asyncio.run(main())


def test_a_long_chunked_call_does_not_starve_a_short_request() -> None:
    """Helpers run one chunk and queue again at the back, so a request arriving later runs between chunks."""

    async def main() -> None:
        pool = WorkerPool(workers=2, max_queue=4)
        events: list[str] = []
        started = threading.Event()

        def chunk(i: int) -> None:
            started.set()
            time.sleep(0.05)
            events.append(f"chunk{i}")

        long_call = asyncio.ensure_future(pool.run(lambda: pool.chunk_runner().map(chunk, 20)))
        await asyncio.to_thread(started.wait, 10)
        await pool.run(lambda: events.append("short"))
        await long_call
        # 20 chunks of 50 ms on 2 threads take ~0.5 s; the short request ran within a chunk or two.
        assert events.index("short") <= 4, events
        await pool.shutdown()

    asyncio.run(main())


def test_an_error_in_one_chunk_is_raised_after_the_started_chunks_end() -> None:
    async def main() -> None:
        pool = WorkerPool(workers=2, max_queue=4)
        ended: list[int] = []

        def chunk(i: int) -> int:
            if i == 3:
                raise ValueError("chunk 3 failed")
            time.sleep(0.01)
            ended.append(i)
            return i

        with pytest.raises(ValueError, match="chunk 3 failed"):
            await pool.run(lambda: pool.chunk_runner().map(chunk, 50))
        assert len(ended) < 49  # the chunks after the failure were not run
        assert await pool.run(lambda: pool.chunk_runner().map(lambda i: i, 3)) == [0, 1, 2]
        await pool.shutdown()

    asyncio.run(main())


def test_an_abandoned_call_stops_handing_out_chunks() -> None:
    """A timed-out request's long song frees the pool within a chunk instead of running to its end."""

    async def main() -> None:
        pool = WorkerPool(workers=2, max_queue=4)
        ran: list[int] = []
        outcome: list[BaseException] = []

        def chunk(i: int) -> None:
            time.sleep(0.02)
            ran.append(i)

        def call() -> None:
            try:
                pool.chunk_runner().map(chunk, 200)  # 4 s of chunks on one thread
            except BaseException as exc:
                outcome.append(exc)
                raise

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.run(call), timeout=0.2)
        deadline = time.monotonic() + 5
        while (pool.busy or not outcome) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert pool.busy == 0
        assert len(ran) < 60  # stopped within a chunk or two of the timeout, far from all 200
        assert isinstance(outcome[0], RequestTimeoutError)
        assert await pool.run(lambda: pool.chunk_runner().map(lambda i: i, 3)) == [0, 1, 2]
        await pool.shutdown()

    asyncio.run(main())


def test_chunks_still_run_when_the_pool_is_shutting_down() -> None:
    """A call already running finishes its chunks on its own thread once no helper can be queued."""

    async def main() -> None:
        pool = WorkerPool(workers=2, max_queue=4)
        gate = threading.Event()

        def call() -> list[int]:
            assert gate.wait(10)
            return pool.chunk_runner().map(lambda i: i + 1, 5)

        running = asyncio.ensure_future(pool.run(call))
        while pool.busy == 0:
            await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(pool.shutdown())
        await asyncio.sleep(0.05)
        gate.set()
        assert await running == [1, 2, 3, 4, 5]
        await closing

    asyncio.run(main())


# --- through HTTP ---------------------------------------------------------------------------------------


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_32_parallel_requests_are_all_correct_and_share_batches(
    served_model: Path, predictor: Predictor, extractor16k: FeatureExtractor
) -> None:
    audio = [encode(synth_music(2.0 + 0.5 * i, 16_000, seed=i), 16_000) for i in range(4)]
    features = [clip(1 + i % 8, seed=100 + i) for i in range(28)]

    async def fire(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=32)) as c:
            calls = [c.post("/v1/predict", files={"file": ("a.wav", a, "audio/wav")}) for a in audio]
            for i, x in enumerate(features):
                if i % 2:
                    calls.append(c.post("/v1/predict/features", json={"features": x.tolist()}))
                else:
                    calls.append(
                        c.post(
                            "/v1/predict/features",
                            content=npy(x),
                            headers={"content-type": "application/x-npy"},
                        )
                    )
            return list(await asyncio.gather(*calls))

    with serving(served_model, max_wait_ms=50, max_batch=16) as url:
        responses = asyncio.run(fire(url))
        scraped = httpx.get(f"{url}/metrics").text
    assert [r.status_code for r in responses] == [200] * 32
    for data, r in zip(audio, responses[:4], strict=True):
        want = predictor.predict(extractor16k.extract(decode(data, 16_000)).values)
        got = np.array([[f["arousal"], f["valence"]] for f in r.json()["frames"]])
        assert np.max(np.abs(got - want)) <= 1e-5
    for x, r in zip(features, responses[4:], strict=True):
        got = np.array([[f["arousal"], f["valence"]] for f in r.json()["frames"]])
        assert np.max(np.abs(got - predictor.predict(x))) <= 1e-5
    batches = metric(scraped, "mer_batch_size_count")
    single = metric(scraped, 'mer_batch_size_bucket{le="1.0"}')
    assert metric(scraped, "mer_batch_size_sum") == 32
    assert single < batches  # at least one inference call served more than one request


def test_a_full_queue_answers_503_with_retry_after_at_once(served_model: Path) -> None:
    x = npy(clip(2, 1))

    async def fire(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            headers = {"content-type": "application/x-npy"}
            return list(
                await asyncio.gather(
                    *(c.post("/v1/predict/features", content=x, headers=headers) for _ in range(10))
                )
            )

    # Clips wait up to 1.5 s for companions, and only two may wait: the rest must be turned away.
    with serving(served_model, max_queue=2, max_wait_ms=1500, max_batch=64, pool_workers=2) as url:
        responses = asyncio.run(fire(url))
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503}
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "overloaded"
        else:
            assert r.json()["num_frames"] == 2


def test_the_audio_budget_bounds_the_seconds_extracted_at_once() -> None:
    budget = AudioBudget(100.0)
    active: list[float] = []
    most = [0.0]
    lock = threading.Lock()

    def work(seconds: float) -> None:
        with budget.hold(seconds):
            with lock:
                active.append(seconds)
                most[0] = max(most[0], sum(active))
            time.sleep(0.05)
            with lock:
                active.remove(seconds)

    threads = [threading.Thread(target=work, args=(s,)) for s in (60, 60, 30, 30, 150, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert all(not t.is_alive() for t in threads)  # a clip over the whole budget still runs, alone
    assert most[0] <= 150
    assert budget.held == 0.0


def test_the_audio_budget_is_given_back_when_extraction_fails() -> None:
    budget = AudioBudget(10.0)
    with pytest.raises(RuntimeError), budget.hold(8.0):
        raise RuntimeError("openSMILE failed")
    assert budget.held == 0.0
    with budget.hold(10.0):
        assert budget.held == 10.0


def test_memory_can_be_handed_back_on_this_platform() -> None:
    assert release_memory() in (True, False)  # glibc: whether pages were released; never raises
