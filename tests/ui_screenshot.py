"""Screenshot the page after an upload (README's docs/img/page.png), with the browser tests' driver.

Usage: ``python -m tests.ui_screenshot MODEL AUDIO OUT.png``. The README's picture is the shipped
model on the first 120 s of Drascula's track 1 (Debian's ``drascula-music``; see model_export.real_music).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import serving
from tests.test_ui import _browser, _wait


def main(model: Path, audio: Path, out: Path) -> None:
    """Serve ``model``, upload ``audio`` on the page, save a 1360 x 880 screenshot to ``out``."""
    with serving(model) as base:
        driver = _browser()
        try:
            driver.get(f"{base}/")
            _wait(driver, "document.getElementById('model').textContent.startsWith('Model')")
            driver.find_element("id", "file").send_keys(str(audio.resolve()))
            _wait(driver, "document.getElementById('status').dataset.state === 'done'", timeout=600)
            driver.set_window_size(1360, 880)
            if not driver.save_screenshot(str(out)):
                raise SystemExit(f"could not write {out}")
        finally:
            driver.quit()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
