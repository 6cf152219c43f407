"""The stepper's provenance chain follows facts decoded from the instructions' bytes.

The listing carries each instruction's `flow` (explore/provenance.flow, the
rules who-wrote follows), and the page's chain must be who-wrote's: the
cases here are ones the page got wrong while it parsed the instruction text
(an immediate stored into memory, `lea`, `movbe`, who-wrote's depth) and the
ones it must keep right (32-bit moves, `movabs`, pops into a register).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stacktrace_lab.explore.provenance import parse_slot, provenance
from stacktrace_lab.record.recorder import record
from stacktrace_lab.scenario import load_scenario
from stacktrace_lab.stepper import standalone_page, stepper_data
from stacktrace_lab.trace import load_trace
from tests.conftest import scenario_toml
from tests.test_stepper_browser import _errors, _text, browser

__all__ = ["browser"]  # the fixture, imported for the tests below

#: Intel syntax: sub-registers, immediates without `$`, movabs, a pop into a register.
MOVES = """
main:
    sub rsp, 32
    mov eax, 7
    push rax
    pop rbx
    mov ecx, ebx
    mov qword ptr [rsp + 16], rcx
    movabs rdx, 0x1122334455667788
    mov qword ptr [rsp + 24], rdx
    mov qword ptr [rsp], 5
    hlt
"""
#: An address computed by `lea` from a register copied from rsp.
ADDRESS = """
main:
    movq %rsp, %rbx
    leaq -64(%rbx), %rdx
    pushq %rdx
    hlt
"""
#: A chain longer than who-wrote follows, then `movbe` (a load with its bytes swapped:
#: a computation, though its name starts with `mov`).
DEEP = """
main:
    mov eax, 1
    mov rbx, rax
    mov rcx, rbx
    mov rdx, rcx
    mov rsi, rdx
    mov rdi, rsi
    mov r8, rdi
    mov r9d, r8d
    push r9
    movbe rax, qword ptr [rsp]
    push rax
    hlt
"""
SCENARIOS = {"moves": (MOVES, "intel"), "address": (ADDRESS, "att"), "deep": (DEEP, "intel")}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("stepper-flow")
    paths = {}
    for name, (source, syntax) in SCENARIOS.items():
        toml = out / f"{name}.toml"
        toml.write_text(scenario_toml(source, syntax=syntax, stacks=(("main", 256),)))
        trace_path = out / f"{name}.parquet"
        record(load_scenario(toml), trace_path)
        page = out / f"{name}.html"
        page.write_text(standalone_page(load_trace(trace_path)), encoding="utf-8")
        paths[name] = trace_path
        paths[f"{name}.html"] = page
    return paths


def test_the_listing_carries_each_instructions_flow(made: dict[str, Path]) -> None:
    flows = {}
    for name in SCENARIOS:
        for line in stepper_data(load_trace(made[name]))["listing"]:
            flows[line["insn"]] = line["flow"]
    # A 32-bit move copies the register (as its trace column); immediates, movabs.
    assert flows["movl %ebx, %ecx"] == {"source": "rbx", "dest": "rcx", "how": "move"}
    assert flows["movl %r8d, %r9d"] == {"source": "r8", "dest": "r9", "how": "move"}
    assert flows["movl $7, %eax"] == {"source": "imm", "dest": "rax", "how": "move"}
    assert flows["movabsq $0x1122334455667788, %rdx"] == {
        "source": "imm",
        "dest": "rdx",
        "how": "move",
    }
    # A pop into a register is a load; stores name their source only.
    assert flows["popq %rbx"] == {"source": "mem", "dest": "rbx", "how": "move"}
    assert flows["pushq %rax"] == {"source": "rax"}
    assert flows["movq %rcx, 0x10(%rsp)"] == {"source": "rcx"}
    assert flows["movq $5, (%rsp)"] == {"source": "imm"}
    # lea computes its register from the base; movbe and sub are not moves.
    assert flows["leaq -0x40(%rbx), %rdx"] == {"source": "rbx", "dest": "rdx", "how": "address"}
    assert flows["movbeq (%rsp), %rax"] == {"source": "mem"}
    assert flows["subq $0x20, %rsp"] == {"source": "imm"}
    assert flows["hlt"] == {}


def test_the_listing_gives_calls_and_returns_their_kind(first_switch_trace: Path) -> None:
    listing = stepper_data(load_trace(first_switch_trace))["listing"]
    kinds = {line["flow"].get("kind") for line in listing}
    assert {"call", "ret"} <= kinds
    for line in listing:
        if line["insn"].startswith("call"):
            assert line["flow"]["kind"] == "call"


def test_served_pages_carry_the_flow_too(made: dict[str, Path]) -> None:
    trace = load_trace(made["moves"])
    served = stepper_data(trace, serve={"window": "/window"})
    assert served["listing"] == stepper_data(trace)["listing"]


@pytest.mark.parametrize(
    ("name", "index", "steps"),
    [
        # A store of an immediate: who-wrote's store, then its immediate (the same step).
        ("moves", 216, [8, 8]),
        # Through a 32-bit move, a pop into rbx, the pushed slot, an immediate.
        ("moves", 232, [5, 4, 3, 2, 1]),
        ("moves", 240, [7, 6]),  # movabs
        ("moves", 208, [2, 1]),
        # Through lea to the register it computes from, and on to its move from rsp.
        ("address", 240, [2, 1, 0]),
        # Six links at most, as who-wrote.
        ("deep", 240, [8, 7, 6, 5, 4, 3]),
        # movbe is computed: not followed as a load.
        ("deep", 232, [10, 9]),
    ],
)
def test_the_chain_is_who_wrotes_from_the_decoded_bytes(
    browser: Any, made: dict[str, Path], name: str, index: int, steps: list[int]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    trace = load_trace(made[name])
    before = trace.num_rows - 1
    chain = provenance(trace, parse_slot(trace, f"main:{index}"), before).chain
    expected = [link.step for link in chain if link.step is not None]
    assert expected == steps
    browser.get("about:blank")
    browser.get(made[f"{name}.html"].as_uri() + f"#step={before}")
    WebDriverWait(browser, 30).until(
        lambda d: "stl-ready" in d.find_element(By.ID, "stl-stepper").get_attribute("class")
    )
    browser.find_element(
        By.CSS_SELECTOR, f'.stl-telescope tr[data-index="{index}"] .stl-written a'
    ).click()
    WebDriverWait(browser, 30).until(lambda d: _text(d, ".stl-step") == str(expected[0]))
    items = browser.find_elements(By.CSS_SELECTOR, ".stl-provenance li[data-step]")
    assert [int(li.get_attribute("data-step")) for li in items] == expected
    assert _errors(browser) == []


def test_a_windowed_pages_chain_is_who_wrotes_as_far_as_it_has_steps(
    browser: Any, tmp_path: Path
) -> None:
    """Past the embedded steps the chain stops, at a writer the page knows only by its
    instruction's address: its text (and flow) come from the listing."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    trace_path = tmp_path / "green-threads.parquet"
    record(load_scenario("green-threads"), trace_path)
    trace = load_trace(trace_path)
    data = stepper_data(trace, limit=500)
    windows = [(w["start"], w["stop"]) for w in data["windows"]]
    assert len(windows) > 1

    def embedded(step: int) -> bool:
        return any(start <= step < stop for start, stop in windows)

    # A store in a window whose value was loaded from a slot written before the window.
    writer, slot, index = next(
        (step, slot, int(addr, 16) - slot.region.base)
        for window in data["windows"]
        for step, addr, _ in window["writes"]
        if int(addr, 16) % 8 == 0
        and (slot := parse_slot(trace, hex(int(addr, 16))))
        and slot.region is not None
        and any(
            link.step is not None and not embedded(link.step)
            for link in provenance(trace, slot, step + 1).chain
        )
    )
    chain = provenance(trace, slot, writer + 1).chain
    steps = [link.step for link in chain if link.step is not None]
    first_outside = next(i for i, s in enumerate(steps) if not embedded(s))
    outside = chain[[link.step for link in chain].index(steps[first_outside])]
    assert outside.instruction is not None
    page = tmp_path / "green-threads.html"
    page.write_text(standalone_page(trace, limit=500), encoding="utf-8")
    browser.get("about:blank")
    browser.get(page.as_uri() + f"#step={writer + 1}")
    WebDriverWait(browser, 30).until(
        lambda d: "stl-ready" in d.find_element(By.ID, "stl-stepper").get_attribute("class")
    )
    browser.find_element(
        By.CSS_SELECTOR, f'.stl-telescope tr[data-index="{index}"] .stl-written a'
    ).click()
    WebDriverWait(browser, 30).until(lambda d: _text(d, ".stl-step") == str(writer))
    items = browser.find_elements(By.CSS_SELECTOR, ".stl-provenance li[data-step]")
    assert [int(li.get_attribute("data-step")) for li in items] == steps[: first_outside + 1]
    assert outside.instruction.text in items[-1].text
    assert _errors(browser) == []
