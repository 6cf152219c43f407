"""The stepper in a real browser: headless Chromium from the system, driven by Selenium.

Skipped, with the reason, where Selenium, Chromium or chromedriver is missing
(`.ci/run` installs Debian's `chromium` and `chromium-driver`). Selenium is
pointed at the system's chromedriver, so it never downloads a browser.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stacktrace_lab.record.recorder import Recording
from stacktrace_lab.report.build import build_report
from stacktrace_lab.stepper import standalone_page
from stacktrace_lab.trace import load_trace

RET_STEP = 12

CHROMIUM = os.environ.get("STACKTRACE_LAB_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("STACKTRACE_LAB_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for what, path in (("Chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)) and not shutil.which(path):
            return f"{what} not found at {path} (apt-get install chromium chromium-driver)"
    return None


def headless_chromium(
    tmp_path_factory: pytest.TempPathFactory, what: str, width: int, height: int
) -> Iterator[Any]:
    """Headless Chromium through the system's chromedriver, its console log kept, in a
    `width` x `height` window; skips `what`, saying why, where it cannot run."""
    reason = _missing()
    if reason is not None:
        pytest.skip(f"no browser for {what}: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    yield from headless_chromium(tmp_path_factory, "the stepper test", 1500, 1200)


def _open(browser: Any, page: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page.as_uri())
    WebDriverWait(browser, 30).until(
        lambda d: "stl-ready" in d.find_element(By.ID, "stl-stepper").get_attribute("class")
    )


def _press(browser: Any, key: str, times: int = 1) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    actions = ActionChains(browser)
    for _ in range(times):
        actions.send_keys(key)
    actions.perform()


def _text(browser: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.CSS_SELECTOR, selector).text)


def _errors(browser: Any) -> list[Any]:
    return [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]


@pytest.mark.parametrize("page_kind", ["report", "standalone"])
def test_step_to_the_ret_and_see_hello_at_index_32(
    browser: Any, first_switch_trace: Path, tmp_path: Path, page_kind: str
) -> None:
    """In the report's index.html (and in a page of its own): step to the ret, read the slot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    trace = load_trace(first_switch_trace)
    hello = trace.metadata.symbols["hello"]
    if page_kind == "report":
        page = build_report(trace, tmp_path / "report").directory / "index.html"
    else:
        page = tmp_path / "stepper.html"
        page.write_text(standalone_page(trace), encoding="utf-8")
    _open(browser, page)
    assert _text(browser, ".stl-step") == "0"
    cursor = browser.find_element(By.CSS_SELECTOR, ".stl-cursor")
    start_x = float(cursor.get_attribute("x1"))

    _press(browser, Keys.END)
    assert _text(browser, ".stl-step") == "18"
    _press(browser, Keys.HOME)
    _press(browser, Keys.ARROW_RIGHT, RET_STEP + 2)
    _press(browser, Keys.ARROW_LEFT, 2)
    assert _text(browser, ".stl-step") == str(RET_STEP)
    assert _text(browser, ".stl-insn") == "retq"
    # address, symbol, instruction, source line
    assert _text(browser, ".stl-listing tr.stl-current").split()[2:] == [
        "retq",
        "first-switch.toml:49",
    ]

    slot = browser.find_element(By.CSS_SELECTOR, '.stl-telescope tr[data-index="32"]')
    assert slot.find_element(By.CSS_SELECTOR, ".stl-value").text == f"{hello:#018x}"
    assert slot.find_element(By.CSS_SELECTOR, ".stl-points-to").text == "hello+0"
    assert slot.find_element(By.CSS_SELECTOR, ".stl-written").text == (
        "step 6 movq %rcx, 0x20(%rax)"
    )
    assert "stl-rsp" in slot.get_attribute("class")  # rsp points at the slot the ret pops
    assert "green[32]" in _text(browser, ".stl-telescope-title")
    # The report names the target as its analysis does ("hello"), the standalone
    # page as the stepper's own scan does ("hello+0").
    switch = _text(browser, ".stl-switch")
    assert re.search(r"pops hello(\+0)? from green\[32\], planted at step 6", switch)
    assert float(cursor.get_attribute("x1")) > start_x  # the chart's cursor followed

    # One step on, the CPU is in hello with rsp at green+40.
    _press(browser, Keys.ARROW_RIGHT)
    assert _text(browser, ".stl-symbol") == "hello+0"
    rsp_row = browser.find_element(By.CSS_SELECTOR, ".stl-telescope tr.stl-rsp")
    assert rsp_row.get_attribute("data-index") == "40"
    browser.save_screenshot(str(tmp_path / "stepper-after-ret.png"))
    assert _errors(browser) == []


LONG = """
main:
    mov $400, %ecx
again:
    call work
    dec %ecx
    jnz again
    call switch
    hlt
work:
    push %rbx
    pop %rbx
    ret
switch:
    movabs $landing, %rax
    mov %rax, (%rsp)
    ret
landing:
    hlt
"""


def test_a_windowed_trace_says_so_and_jumps_to_the_switch(
    browser: Any, record_source: Callable[..., Recording], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    trace = load_trace(record_source(LONG).path)
    page = tmp_path / "long.html"
    page.write_text(standalone_page(trace, limit=500), encoding="utf-8")
    _open(browser, page)
    assert "too many to embed whole" in _text(browser, ".stl-note")
    browser.find_element(By.CSS_SELECTOR, '[data-move="next-switch"]').click()
    assert _text(browser, ".stl-insn") == "retq"
    assert "pops landing+0" in _text(browser, ".stl-switch")
    gap = _text(browser, ".stl-gap")
    assert "window 2 of 2" in gap and "not embedded" in gap
    assert _errors(browser) == []


def test_the_page_names_the_thread_of_each_step(browser: Any, tmp_path: Path) -> None:
    """A threaded program's stepper page says which OS thread ran each step."""
    import numpy as np

    from stacktrace_lab.examples import compiler_missing
    from stacktrace_lab.record.linux.elf_front import record_elf

    from .test_threads import JOIN_C, _build

    if compiler_missing("c-static") is not None:
        pytest.skip(f"cannot build the threaded program: {compiler_missing('c-static')}")
    trace = load_trace(record_elf(_build(tmp_path, "join", JOIN_C), tmp_path / "j.parquet").path)
    threads = np.asarray(trace.table(["thread"]).column("thread").to_numpy())
    # The whole run embedded (a report embeds windows around the switches only).
    page = tmp_path / "stepper.html"
    page.write_text(standalone_page(trace, limit=threads.size), encoding="utf-8")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _open(browser, page)
    seen = set()
    # Each shown step is compared with the thread column at that step.
    for target in np.linspace(0, threads.size - 1, 40).astype(int).tolist():
        goto = browser.find_element(By.CSS_SELECTOR, ".stl-goto")
        goto.clear()
        goto.send_keys(str(target), Keys.ENTER)
        shown = int(_text(browser, ".stl-step"))
        assert _text(browser, ".stl-thread") == f"thread {threads[shown]}", shown
        seen.add(int(threads[shown]))
    assert seen == {1, 2}
    assert _errors(browser) == []
