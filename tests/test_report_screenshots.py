"""Every committed example report (reports/*/index.html) in headless Chromium.

Each page is opened from disk, photographed whole and saved for a person to
look at: `$STACKTRACE_LAB_ARTIFACTS/screenshots/<report>.png`, or
`test-artifacts/screenshots/` in the checkout (gitignored; CI can upload the
folder). The test then checks what a reader would notice first: every picture
loaded, nothing wider than the window (a table running off the page, as the
Rust report's planted-return table once did), no script error. Skipped with
the reason where Selenium, Chromium or chromedriver is missing (`.ci/run`
installs them).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_stepper_browser import headless_chromium

REPO = Path(__file__).resolve().parent.parent
REPORTS = sorted(p.parent for p in (REPO / "reports").glob("*/index.html"))
#: The window the pages are judged in: a laptop's, narrower than the flags' default.
WIDTH, HEIGHT = 1280, 900
#: Chromium cannot paint one image taller than this; longer pages are cut there.
MAX_SHOT_HEIGHT = 16_000


def artifacts() -> Path:
    root = os.environ.get("STACKTRACE_LAB_ARTIFACTS")
    folder = (Path(root) if root else REPO / "test-artifacts") / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from headless_chromium(tmp_path_factory, "the report screenshots", WIDTH, HEIGHT)


# Elements whose right edge passes the window, unless a scrolling box around them
# (div.wide, pre.source: overflow-x auto) keeps them inside it.
OFF_THE_PAGE = """
const width = document.documentElement.clientWidth;
const scrolls = (e) => {
  for (let a = e.parentElement; a; a = a.parentElement) {
    const x = getComputedStyle(a).overflowX;
    if (x === 'auto' || x === 'scroll') return a;
  }
  return null;
};
const out = [];
for (const e of document.querySelectorAll('table, img, pre, figure, svg, canvas')) {
  const box = e.getBoundingClientRect();
  if (box.width === 0) continue;
  const holder = scrolls(e);
  const right = holder ? holder.getBoundingClientRect().right : box.right;
  if (right > width + 1) {
    out.push(`${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''} ends at ${Math.round(right)}px`);
  }
}
return [width, document.documentElement.scrollWidth, out];
"""

BROKEN_IMAGES = """
return Array.from(document.images)
  .filter((i) => !i.complete || i.naturalWidth === 0)
  .map((i) => (i.alt || i.src.slice(0, 60)));
"""


@pytest.mark.parametrize("report", REPORTS, ids=[p.name for p in REPORTS])
def test_each_committed_report_renders_whole(browser: Any, report: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get((report / "index.html").as_uri())
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    metrics = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})
    content = metrics["cssContentSize"]
    height = min(int(content["height"]) + 1, MAX_SHOT_HEIGHT)
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1},
        },
    )
    png = base64.b64decode(shot["data"])
    saved = artifacts() / f"{report.name}.png"
    saved.write_bytes(png)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000, saved
    # The whole page, not the window: taller than one screen.
    assert int.from_bytes(png[20:24], "big") > HEIGHT, f"{saved}: only one screen captured"

    images = browser.execute_script("return document.images.length")
    assert images >= 2, f"{report.name}: the rsp plot and the heatmap are missing"
    assert browser.execute_script(BROKEN_IMAGES) == [], f"{report.name}: pictures that did not load"
    width, scroll_width, off_page = browser.execute_script(OFF_THE_PAGE)
    assert off_page == [], f"{report.name} in a {width}px window (see {saved})"
    assert scroll_width <= width + 1, f"{report.name}: the page scrolls sideways (see {saved})"
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == [], f"{report.name}: script errors: {errors}"
