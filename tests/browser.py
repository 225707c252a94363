"""Browser test helpers: a real headless Chromium (Debian's, driven by selenium) and PNG decoding."""

from __future__ import annotations

import base64
import io
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def require_chromium() -> None:
    """Skip (with the reason) where Debian's Chromium or its driver is not installed."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.skip(f"needs Debian's chromium and chromium-driver ({', '.join(missing)} not installed; "
                    "apt-get install -y chromium chromium-driver)")
    pytest.importorskip("selenium", reason="needs selenium (pip install -e '.[test]')")


@contextmanager
def chromium(width: int = 1400, height: int = 1000):
    """A real headless Chromium driven by selenium, with its console log readable (`driver.get_log('browser')`)."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def png_pixels(data: bytes):
    """A PNG decoded to a float array (matplotlib's own reader: no extra dependency)."""
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(data), format="png")


def data_uri_png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    return base64.b64decode(src[len(prefix):])
