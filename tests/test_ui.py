"""The page at / (app.http.routes.ui): served files and headers, then a real headless Chromium.

The browser tests drive Debian's ``chromium`` through its ``chromidriver`` (selenium) against a real
uvicorn on loopback: upload a synthesised clip and wait for the curves, an upload the API refuses, the
API-key prompt, and the microphone through /v1/stream (Chromium's fake capture device playing a WAV).
They are skipped where Chromium is not installed, except under CI (``.ci/run`` installs it).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from model_export.testing import synth_music
from tests.conftest import serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
API_KEY = "ui-test-key-123"


@pytest.fixture(scope="module")
def url(served_model: Path) -> Iterator[str]:
    with serving(served_model) as base:
        yield base


# --- the files and their headers -------------------------------------------------------------------------


def test_the_page_and_its_files_are_served_with_a_strict_policy(url: str) -> None:
    page = httpx.get(f"{url}/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<canvas id="timeline"' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "default-src 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, kind in [
        ("app.js", "text/javascript"),
        ("pcm-worklet.js", "text/javascript"),
        ("style.css", "text/css"),
    ]:
        r = httpx.get(f"{url}/ui/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(kind)
        assert len(r.content) > 500
    for name in ["index.html", "../settings.py", "nope.js"]:
        r = httpx.get(f"{url}/ui/{name}")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"


def test_the_page_is_open_without_the_key_the_api_needs(served_model: Path) -> None:
    with serving(served_model, api_key=API_KEY) as base:
        assert httpx.get(f"{base}/").status_code == 200
        assert httpx.get(f"{base}/ui/app.js").status_code == 200
        assert httpx.get(f"{base}/v1/models/default").status_code == 401


def test_the_page_can_be_switched_off(served_model: Path) -> None:
    with serving(served_model, ui=False) as base:
        assert httpx.get(f"{base}/").status_code == 404
        assert httpx.get(f"{base}/ui/app.js").status_code == 404
        assert httpx.get(f"{base}/v1/models/default").status_code == 200


# --- a real browser ----------------------------------------------------------------------------------


def _browser(*extra: str) -> webdriver.Chrome:
    if CHROMIUM is None or CHROMEDRIVER is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver must be installed under CI (.ci/run installs them)")
        pytest.skip("needs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        *extra,
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def _wait(driver: webdriver.Chrome, condition: str, timeout: float = 60.0) -> None:
    """Wait until the JavaScript expression ``condition`` is true; fail with the page's status."""
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.1).until(
            lambda d: d.execute_script(f"return !!({condition})")
        )
    except TimeoutException:
        status = driver.execute_script("return document.getElementById('status').textContent")
        logs = driver.get_log("browser")  # type: ignore[no-untyped-call]
        pytest.fail(f"waited {timeout} s for {condition}; status: {status!r}; console: {logs}")


# Pixels of a canvas close to a colour: proof that the curve (not only the axes) was drawn.
_COUNT_PIXELS = """
const [id, r, g, b] = arguments;
const c = document.getElementById(id);
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0;
for (let i = 0; i < d.length; i += 4) {
  const near = Math.abs(d[i] - r) < 40 && Math.abs(d[i + 1] - g) < 40 && Math.abs(d[i + 2] - b) < 40;
  if (near && d[i + 3] > 200) n++;
}
return n;
"""
AROUSAL = (214, 39, 40)
VALENCE = (31, 119, 180)
DOT = (90, 40, 140)


def _status(driver: webdriver.Chrome) -> tuple[str, str]:
    state, text = driver.execute_script(
        "const s = document.getElementById('status'); return [s.dataset.state, s.textContent];"
    )
    return str(state), str(text)


def _clip(path: Path, seconds: float, rate: int = 16_000) -> Path:
    sf.write(path, synth_music(seconds, rate, seed=4), rate, subtype="PCM_16")
    return path


@pytest.mark.slow
def test_an_uploaded_clip_is_drawn_over_time_and_on_the_plane(url: str, tmp_path: Path) -> None:
    clip = _clip(tmp_path / "song.wav", 12.3)
    driver = _browser()
    try:
        driver.get(f"{url}/")
        _wait(driver, "document.getElementById('model').textContent.includes('tiny 0.0.1')")
        blank = driver.execute_script(_COUNT_PIXELS, "timeline", *AROUSAL)
        assert blank == 0
        driver.find_element("id", "file").send_keys(str(clip))
        _wait(driver, "document.getElementById('status').dataset.state === 'done'")
        expected = math.floor(12.3 / 0.5)
        assert driver.execute_script("return window.merState.frames.length") == expected
        _wait(driver, f"document.body.dataset.frames === '{expected}'")
        # Both curves and the plane's dots are on the canvases.
        assert driver.execute_script(_COUNT_PIXELS, "timeline", *AROUSAL) > 200
        assert driver.execute_script(_COUNT_PIXELS, "timeline", *VALENCE) > 200
        assert driver.execute_script(_COUNT_PIXELS, "plane", *DOT) > 20
        # The page shows what the API returned for the same clip.
        api = httpx.post(
            f"{url}/v1/predict", files={"file": ("song.wav", clip.read_bytes(), "audio/wav")}, timeout=60
        )
        body = api.json()
        shown = driver.execute_script("return window.merState.frames.map(f => [f.arousal, f.valence])")
        np.testing.assert_allclose(shown, [[f["arousal"], f["valence"]] for f in body["frames"]], atol=1e-6)
        assert driver.find_element("id", "s-frames").text == str(expected)
        assert driver.find_element("id", "s-quadrant").text.startswith(body["summary"]["quadrant"])
        assert "song.wav" in _status(driver)[1]
        shot = tmp_path / "page.png"
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()


@pytest.mark.slow
def test_an_upload_the_api_refuses_shows_its_error(url: str, tmp_path: Path) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    driver = _browser()
    try:
        driver.get(f"{url}/")
        _wait(driver, "document.getElementById('model').textContent.includes('tiny')")
        driver.find_element("id", "file").send_keys(str(bad))
        _wait(driver, "document.getElementById('status').dataset.state === 'error'")
        _, text = _status(driver)
        assert text.startswith("HTTP 4"), text
        assert "unsupported_audio" in text
        assert driver.execute_script("return window.merState.frames.length") == 0
    finally:
        driver.quit()


@pytest.mark.slow
def test_the_page_asks_for_the_api_key_and_then_works(served_model: Path, tmp_path: Path) -> None:
    clip = _clip(tmp_path / "short.wav", 4.2)
    driver = _browser()
    with serving(served_model, api_key=API_KEY) as base:
        try:
            driver.get(f"{base}/")
            _wait(driver, "!document.getElementById('key-row').hidden")
            assert "API key" in _status(driver)[1]
            key = driver.find_element("id", "api-key")
            key.send_keys(API_KEY)
            driver.execute_script("document.getElementById('api-key').dispatchEvent(new Event('change'))")
            _wait(driver, "document.getElementById('model').textContent.includes('tiny')")
            driver.find_element("id", "file").send_keys(str(clip))
            _wait(driver, "document.getElementById('status').dataset.state === 'done'")
            assert driver.execute_script("return window.merState.frames.length") == 8
        finally:
            driver.quit()


@pytest.mark.slow
def test_the_microphone_streams_through_v1_stream(url: str, tmp_path: Path) -> None:
    # Chromium's fake capture device plays this file (in a loop, in real time) as the microphone.
    rate = 48_000
    mic = tmp_path / "mic.wav"
    sf.write(mic, np.repeat(synth_music(6.0, rate, seed=5)[:, None], 2, axis=1), rate, subtype="PCM_16")
    driver = _browser(
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}",
        "--autoplay-policy=no-user-gesture-required",
    )
    try:
        driver.get(f"{url}/")
        _wait(driver, "document.getElementById('model').textContent.includes('tiny')")
        driver.find_element("id", "mic").click()
        _wait(driver, "window.merState.frames.length >= 4", timeout=30)
        assert driver.find_element("id", "mic").get_attribute("aria-pressed") == "true"
        driver.find_element("id", "mic").click()  # stop: the server sends the rest and the summary, then 1000
        _wait(driver, "document.getElementById('status').dataset.state === 'done'", timeout=30)
        frames = driver.execute_script("return window.merState.frames")
        assert len(frames) >= 4
        assert [f["index"] for f in frames] == list(range(len(frames)))
        assert all(-1 <= f["arousal"] <= 1 and -1 <= f["valence"] <= 1 for f in frames)
        assert driver.execute_script(_COUNT_PIXELS, "timeline", *AROUSAL) > 20
        assert driver.find_element("id", "s-frames").text == str(len(frames))
        assert "microphone" in _status(driver)[1]
    finally:
        driver.quit()
