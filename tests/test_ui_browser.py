"""The review page in a real browser: Debian's headless chromium, driven by chromedriver through selenium.

It loads the event list, finds the event, opens it, and checks in the DOM and in a
screenshot that the snapshots and the score plot render. Set VAD_SCREENSHOTS to a
folder to keep the screenshots. Skips, saying why, where chromium, chromedriver or
selenium is missing (.ci/run installs Debian's chromium and chromium-driver).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamer.pipeline.config import free_port_base
from streamer.pipeline.events import EventLog
from streamer.pipeline.media import EventMedia
from streamer.pipeline.review_config import MediaConfig
from streamer.ui.server import BackgroundServer, site_for_run_dir

from .test_media import SPEC, play

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no headless browser: install Debian's chromium and chromium-driver (as .ci/run does)",
)
SMOOTHED_LINE_BGR = (191, 95, 31)  # the plot's smoothed-score line, #1f5fbf


@pytest.fixture
def run_dir(tmp_path):
    """A run dir holding one event with its snapshots, trace and clip, as the alerter leaves them."""
    media = EventMedia(tmp_path, MediaConfig(preroll_seconds=1.0), SPEC, max_boxes=10)
    events = play(media)
    media.close(60)
    log = EventLog(tmp_path / "events.sqlite")
    for event in events:
        log.append(event)
    log.close()
    return tmp_path


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="vad-chromium-")
    for argument in (
        "--headless",
        "--no-sandbox",  # as root, chromium's sandbox refuses to start
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1300,2000",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver, path: Path) -> np.ndarray:
    driver.save_screenshot(str(path))
    if os.environ.get("VAD_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["VAD_SCREENSHOTS"]) / path.name)
    return cv2.imread(str(path))


def loaded_width(driver, image, timeout: float = 15.0) -> int:
    """The image's natural width once the browser has loaded and decoded it (0 if it never does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        width = driver.execute_script("return arguments[0].complete ? arguments[0].naturalWidth : 0", image)
        if width:
            driver.execute_script("return arguments[0].decode()", image)  # painted before any screenshot
            return width
        time.sleep(0.1)
    return 0


def region(image: np.ndarray, driver, element) -> np.ndarray:
    """The part of a screenshot an element covers (screenshots are in device pixels)."""
    rect = element.rect
    ratio = driver.execute_script("return window.devicePixelRatio")
    x0, y0 = round(rect["x"] * ratio), round(rect["y"] * ratio)
    return image[y0 : y0 + round(rect["height"] * ratio), x0 : x0 + round(rect["width"] * ratio)]


def test_the_page_lists_the_event_and_opens_it_with_snapshots_and_a_score_plot(run_dir, browser, tmp_path):
    site = site_for_run_dir(run_dir, "127.0.0.1", free_port_base(1))
    server = BackgroundServer(site)
    server.start()
    try:
        browser.get(site.url)
        rows = browser.find_elements("css selector", "table.events tr.event")
        assert len(rows) == 1
        thumbnail = rows[0].find_element("css selector", "td.thumb img")
        assert loaded_width(browser, thumbnail) == 720
        listing = screenshot(browser, tmp_path / "events.png")
        assert region(listing, browser, thumbnail).std() > 20  # a picture, not an empty box

        rows[0].find_element("css selector", "a.start").click()
        assert "/events/" in browser.current_url
        snapshots = browser.find_elements("css selector", "figure.snapshot img")
        assert len(snapshots) == 2
        for image in snapshots:
            assert loaded_width(browser, image) == 720
        smoothed = browser.find_element("css selector", "svg.plot polyline.smoothed")
        assert len(smoothed.get_attribute("points").split()) == 28  # pre-roll to the end, one point a frame
        assert browser.execute_script("return arguments[0].getBBox().width", smoothed) > 500
        assert browser.find_element("css selector", "svg.plot line.threshold")
        assert (
            browser.find_element("css selector", "figure.clip video")
            .get_attribute("src")
            .endswith(tuple(f"clip{suffix}" for suffix in (".mp4", ".webm")))
        )

        page = screenshot(browser, tmp_path / "event.png")
        start = region(page, browser, snapshots[0])
        shown = cv2.resize(start, (720, round(720 * start.shape[0] / start.shape[1])))
        saved = cv2.imread(str(run_dir / "snapshots" / browser.current_url.rsplit("/", 1)[1] / "start.jpg"))
        height = min(shown.shape[0], saved.shape[0])
        assert np.abs(shown[:height].astype(int) - saved[:height].astype(int)).mean() < 12  # the snapshot, rendered
        plot = region(page, browser, browser.find_element("css selector", "svg.plot"))
        line = np.all(np.abs(plot.astype(int) - SMOOTHED_LINE_BGR) < 40, axis=2)
        assert line.sum() > 500  # the smoothed score is drawn, in its colour
    finally:
        server.stop()
