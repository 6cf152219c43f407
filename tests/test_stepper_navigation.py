"""Navigating the stepper in headless Chromium: backtraces, click-through to the writer
with the provenance chain, previous/next access, call, ret and stack change, and the URL.

Uses the browser fixture of test_stepper_browser (skipped, with the reason, where
Selenium, Chromium or chromedriver is missing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stacktrace_lab.analysis.events import derive_facts
from stacktrace_lab.analysis.kinds import Kind
from stacktrace_lab.explore.backtrace import backtraces
from stacktrace_lab.explore.provenance import parse_slot, provenance
from stacktrace_lab.record.recorder import record
from stacktrace_lab.scenario import load_scenario
from stacktrace_lab.stepper import standalone_page
from stacktrace_lab.trace import load_trace
from tests.test_stepper_browser import _errors, _text, browser

__all__ = ["browser"]  # the fixture, imported for the tests below

RET_STEP = 12


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("stepper-nav")
    made = {}
    for name in ("first-switch", "green-threads"):
        trace_path = out / f"{name}.parquet"
        record(load_scenario(name), trace_path)
        page = out / f"{name}.html"
        page.write_text(standalone_page(load_trace(trace_path)), encoding="utf-8")
        made[name] = page
        made[f"{name}.trace"] = trace_path
    return made


def _open_at(browser: Any, page: Path, step: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get("about:blank")
    browser.get(page.as_uri() + f"#step={step}")
    WebDriverWait(browser, 30).until(
        lambda d: "stl-ready" in d.find_element(By.ID, "stl-stepper").get_attribute("class")
    )


def _click(browser: Any, selector: str) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, selector).click()


def _wait_step(browser: Any, step: int) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda d: _text(d, ".stl-step") == str(step))


def test_a_link_opens_at_its_step_and_the_url_follows(browser: Any, pages: dict[str, Path]) -> None:
    from selenium.webdriver.common.keys import Keys

    _open_at(browser, pages["first-switch"], 7)
    assert _text(browser, ".stl-step") == "7"
    _click(browser, '[data-move="1"]')
    assert _text(browser, ".stl-step") == "8"
    assert browser.execute_script("return window.location.hash") == "#step=8"
    browser.find_element("css selector", "body").send_keys(Keys.END)
    assert browser.execute_script("return window.location.hash") == "#step=18"
    # Editing the address bar's step moves the stepper too.
    browser.execute_script("window.location.hash = '#step=3'")
    _wait_step(browser, 3)
    # And going to a step by number.
    box = browser.find_element("css selector", ".stl-goto")
    box.send_keys("11", Keys.ENTER)
    _wait_step(browser, 11)
    assert browser.execute_script("return window.location.hash") == "#step=11"
    assert _errors(browser) == []


def test_click_last_written_goes_to_the_writer_with_the_chain(
    browser: Any, pages: dict[str, Path]
) -> None:
    from selenium.webdriver.common.by import By

    _open_at(browser, pages["first-switch"], RET_STEP)
    _click(browser, '.stl-telescope tr[data-index="32"] .stl-written a')
    _wait_step(browser, 6)
    assert _text(browser, ".stl-insn") == "movq %rcx, 0x20(%rax)"
    assert browser.execute_script("return window.location.hash") == "#step=6"
    # The chain is who-wrote's: the store at 6, rcx set at 5 from an immediate.
    trace = load_trace(pages["first-switch.trace"])
    expected = provenance(trace, parse_slot(trace, "green:32"), RET_STEP)
    expected_steps = [link.step for link in expected.chain if link.step is not None]
    items = browser.find_elements(By.CSS_SELECTOR, ".stl-provenance li[data-step]")
    assert [int(li.get_attribute("data-step")) for li in items] == expected_steps == [6, 5]
    assert "movq %rcx, 0x20(%rax)" in items[0].text and "wrote green[32]" in items[0].text
    assert "movabsq $0x40003e, %rcx" in items[1].text and "immediate" in items[1].text
    # The chain's links are clickable too.
    items[1].find_element(By.CSS_SELECTOR, "a").click()
    _wait_step(browser, 5)
    assert _errors(browser) == []


@pytest.mark.parametrize(
    ("slot", "step", "length"),
    [("worker1:992", 128, 2), ("worker1:928", 300, 3), ("worker1:928", 361, 5)],
)
def test_the_chain_is_who_wrotes(
    browser: Any, pages: dict[str, Path], slot: str, step: int, length: int
) -> None:
    """Through a register set from an immediate, through rbp <- rsp <- a push, and
    through a load: the register was loaded from a stack slot, whose writer the
    chain follows on (store, load, store, register, computed)."""
    from selenium.webdriver.common.by import By

    trace = load_trace(pages["green-threads.trace"])
    ref = parse_slot(trace, slot)
    expected = [link.step for link in provenance(trace, ref, step).chain if link.step is not None]
    _open_at(browser, pages["green-threads"], step)
    index = slot.split(":")[1]
    _click(browser, f'.stl-telescope tr[data-index="{index}"] .stl-written a')
    _wait_step(browser, expected[0])
    items = browser.find_elements(By.CSS_SELECTOR, ".stl-provenance li[data-step]")
    assert [int(li.get_attribute("data-step")) for li in items] == expected
    assert len(expected) == length
    assert _errors(browser) == []


def test_previous_and_next_access_of_a_slot_and_a_register(
    browser: Any, pages: dict[str, Path]
) -> None:
    trace = load_trace(pages["green-threads.trace"])
    facts = derive_facts(trace)
    # A slot of worker1 that is written and read several times: the planted thread1 slot.
    worker1 = trace.metadata.region("worker1")
    slot = worker1.base + 992
    table = trace.table(["step", "reads", "writes"]).to_pylist()
    accesses = [
        row["step"]
        for row in table
        if any(
            a["addr"] < slot + 8 and a["addr"] + a["size"] > slot
            for a in row["reads"] + row["writes"]
        )
    ]
    assert len(accesses) >= 3
    start = accesses[1]  # on a step that touches the slot, with rsp on worker1
    _open_at(browser, pages["green-threads"], start + 1)
    rsp_stack = facts.rsp_stack[start + 1]
    assert facts.stacks[rsp_stack].name == "worker1"
    _click(browser, '.stl-telescope tr[data-index="992"] td.stl-index')
    assert _text(browser, ".stl-selection") == "selected: worker1[992]"
    _click(browser, '[data-find="access"][data-dir="-1"]')
    _wait_step(browser, accesses[1])
    _click(browser, '[data-find="access"][data-dir="-1"]')
    _wait_step(browser, accesses[0])
    _click(browser, '[data-find="access"][data-dir="1"]')
    _wait_step(browser, accesses[1])
    _click(browser, '[data-find="access"][data-dir="1"]')
    _wait_step(browser, accesses[2])
    # A register: the steps whose instruction names it, or that change it.
    _click(browser, '.stl-registers tr[data-reg="r12"]')
    r12 = trace.column("r12")
    insns = trace.table(["insn"]).column("insn").to_pylist()
    uses = [s for s in range(len(r12) - 1) if "%r12" in insns[s] or r12[s] != r12[s + 1]]
    here = accesses[2]
    _click(browser, '[data-find="access"][data-dir="1"]')
    _wait_step(browser, next(s for s in uses if s > here))
    _click(browser, '[data-find="access"][data-dir="-1"]')
    _wait_step(browser, max(s for s in uses if s < next(s for s in uses if s > here)))
    assert _errors(browser) == []


def test_a_register_read_is_an_access(browser: Any, pages: dict[str, Path]) -> None:
    """first-switch: rcx is written at step 5 (`movabsq $0x40003e, %rcx`) and only read at
    step 6 (`movq %rcx, 0x20(%rax)`), which leaves it unchanged."""
    _open_at(browser, pages["first-switch"], 0)
    _click(browser, '.stl-registers tr[data-reg="rcx"]')
    assert _text(browser, ".stl-selection") == "selected: rcx"
    for direction, step in ((1, 5), (1, 6), (-1, 5)):
        _click(browser, f'[data-find="access"][data-dir="{direction}"]')
        _wait_step(browser, step)
    assert _errors(browser) == []


def test_previous_and_next_call_ret_and_stack_change(browser: Any, pages: dict[str, Path]) -> None:
    trace = load_trace(pages["green-threads.trace"])
    facts = derive_facts(trace)
    calls = facts.calls.tolist()
    rets = [int(s) for s in range(facts.steps) if facts.kind[s] == Kind.RET]
    changes = facts.switch_steps().tolist()
    _open_at(browser, pages["green-threads"], 0)
    for selector, expected in (
        ('[data-find="call"][data-dir="1"]', calls[0]),
        ('[data-find="call"][data-dir="1"]', calls[1]),
        ('[data-find="ret"][data-dir="1"]', next(r for r in rets if r > calls[1])),
        ('[data-find="stack"][data-dir="1"]', changes[0]),
        ('[data-find="stack"][data-dir="1"]', changes[1]),
        ('[data-find="stack"][data-dir="-1"]', changes[0]),
        ('[data-find="call"][data-dir="-1"]', max(c for c in calls if c < changes[0])),
    ):
        _click(browser, selector)
        _wait_step(browser, expected)
    assert _errors(browser) == []


@pytest.mark.parametrize(
    ("name", "step"), [("green-threads", 900), ("green-threads", 3440), ("first-switch", 14)]
)
def test_the_stepper_shows_the_backtraces_show_prints(
    browser: Any, pages: dict[str, Path], name: str, step: int
) -> None:
    from selenium.webdriver.common.by import By

    trace = load_trace(pages[f"{name}.trace"])
    expected = backtraces(derive_facts(trace), step)
    assert len(expected) >= 2
    _open_at(browser, pages[name], step)
    heads = browser.find_elements(By.CSS_SELECTOR, ".stl-bt-stack")
    assert [h.get_attribute("data-stack") for h in heads] == [b.stack for b in expected]
    assert heads[0].text == f"{expected[0].stack} (running)"
    for bt in expected:
        table = browser.find_element(By.CSS_SELECTOR, f'.stl-frames[data-stack="{bt.stack}"]')
        rows = table.find_elements(By.CSS_SELECTOR, "tr.stl-frame")
        assert [r.get_attribute("data-function") for r in rows] == [f.function for f in bt.frames]
        for row, frame in zip(rows, bt.frames, strict=True):
            assert f"{frame.addr:#x} {frame.location}" in row.text
            assert (frame.source or "") in row.text
        if not bt.running:
            head = next(h for h in heads if h.get_attribute("data-stack") == bt.stack)
            assert head.text == f"{bt.stack} (suspended at step {bt.at_step})"
    assert _errors(browser) == []
