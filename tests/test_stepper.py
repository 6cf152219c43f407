"""The stepper's embedded data and HTML, checked without a browser.

The page rebuilds registers and memory from the data the way these tests do
(`_registers_at`, `_memory_at`), so what the page shows at a step is what the
trace holds there.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stacktrace_lab.arch import REGISTERS
from stacktrace_lab.explore import planted_returns, row_at, telescope
from stacktrace_lab.record.recorder import Recording
from stacktrace_lab.stepper import json_for_script, stepper_data, stepper_fragment
from stacktrace_lab.stepper.data import CHART_POINTS, Window, choose_windows
from stacktrace_lab.stepper.render import _static
from stacktrace_lab.trace import load_trace

RET_STEP = 12


def _registers_at(window: dict[str, Any], step: int) -> dict[str, int]:
    values = [int(v, 16) for v in window["regs0"]]
    for delta in window["deltas"][: step - window["start"]]:
        for i in range(0, len(delta), 2):
            values[delta[i]] = int(delta[i + 1], 16)
    return dict(zip(REGISTERS, values, strict=True))


def _memory_at(window: dict[str, Any], stack: str, step: int) -> tuple[int, bytearray, list[int]]:
    tracked = window["stacks"][stack]
    lo, hi = int(tracked["lo"], 16), int(tracked["hi"], 16)
    memory = bytearray.fromhex(tracked["bytes"])
    writers = list(tracked["writers"])
    for written_at, addr_hex, data_hex in window["writes"]:
        if written_at >= step:
            continue
        addr = int(addr_hex, 16)
        for k, byte in enumerate(bytes.fromhex(data_hex)):
            if lo <= addr + k < hi:
                memory[addr + k - lo] = byte
                writers[(addr + k - (lo - lo % 8)) // 8] = written_at
    return lo, memory, writers


def test_json_cannot_close_the_script_element() -> None:
    hostile = {"description": "</script><script>alert(1)</script><!-- & \u2028"}
    text = json_for_script(hostile)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == hostile


def test_a_hostile_description_stays_inside_the_data(
    record_source: Callable[..., Recording],
) -> None:
    description = 'description = "</script><script>document.title=1</script>"'
    trace = load_trace(record_source("main:\n    hlt\n", extra=description).path)
    html = stepper_fragment(trace)
    assert html.lower().count("</script") == 2  # the data's and the code's own closing tags
    embedded = re.search(
        r'<script type="application/json" id="stl-stepper-data">(.*?)</script>', html, re.S
    )
    assert embedded is not None
    assert json.loads(embedded.group(1))["description"] == trace.metadata.scenario.description


def test_first_switch_is_embedded_whole_and_matches_the_trace(first_switch_trace: Path) -> None:
    trace = load_trace(first_switch_trace)
    data = stepper_data(trace)
    assert data["complete"] is True and data["total_steps"] == 19
    (window,) = data["windows"]
    assert (window["start"], window["stop"]) == (0, 19)
    for step in range(19):
        assert _registers_at(window, step) == row_at(trace, step).registers
    green = trace.metadata.region("green")
    lo, memory, writers = _memory_at(window, "green", RET_STEP)
    assert lo == green.base
    slot = memory[32:40]
    assert int.from_bytes(slot, "little") == trace.metadata.symbols["hello"]
    assert writers[32 // 8] == 6
    assert data["switches"] == [
        {
            "ret_step": 12,
            "stack": "green",
            "index": 32,
            "target": "hello+0",
            "planted_step": 6,
            "note": "",
        }
    ]
    ret_access = window["access"][RET_STEP]
    assert ret_access == [["r", hex(green.base + 32), 8, f"{trace.metadata.symbols['hello']:016x}"]]
    assert [lane["name"] for lane in data["chart"]["lanes"]] == ["main", "green"]
    listing = {line["insn"] for line in data["listing"]}
    assert {"retq", "movq %rcx, 0x20(%rax)", "callq 0x40003a"} <= listing


def test_choose_windows() -> None:
    assert choose_windows(100, [], limit=100) == [Window(0, 100)]
    windows = choose_windows(100_000, [], limit=5000)
    assert windows == [Window(0, 200), Window(99_800, 100_000)]


LOOP = """
main:
    mov $300, %ecx
again:
    call work
    dec %ecx
    jnz again
    call switch             # one planted return, deep in the trace
    hlt
work:
    push %rbx
    pop %rbx
    ret
switch:
    movabs $landing, %rax
    mov %rax, (%rsp)        # overwrite the return address
    ret
landing:
    hlt
"""


def test_a_long_trace_is_embedded_as_windows_around_the_switch(
    record_source: Callable[..., Recording],
) -> None:
    trace = load_trace(record_source(LOOP).path)
    (switch,) = planted_returns(trace)
    limit = 500
    assert trace.num_rows > limit + 400
    data = stepper_data(trace, limit=limit)
    assert data["complete"] is False
    assert "too many to embed whole" in data["note"]
    spans = [(w["start"], w["stop"]) for w in data["windows"]]
    assert spans[0][0] == 0 and spans[-1][1] == trace.num_rows
    assert any(start <= switch.ret_step < stop for start, stop in spans)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans))
    assert sum(stop - start for start, stop in spans) <= limit
    # A step in the middle of a later window: registers and memory agree with the explore layer.
    window = next(w for w in data["windows"] if w["start"] <= switch.ret_step < w["stop"])
    assert window["start"] > 0
    step = switch.ret_step
    assert _registers_at(window, step) == row_at(trace, step).registers
    view = telescope(trace, step)
    assert view is not None
    lo, memory, writers = _memory_at(window, view.region.name, step)
    for slot in view.slots:
        if lo <= slot.addr and slot.addr + 8 <= lo + len(memory):
            assert (
                int.from_bytes(memory[slot.addr - lo : slot.addr - lo + 8], "little") == slot.value
            )
            expected = -1 if slot.written_at is None else slot.written_at
            assert writers[(slot.addr - (lo - lo % 8)) // 8] == expected
    assert len(data["chart"]["points"]) <= CHART_POINTS


def test_the_page_code_has_no_closing_script_tag() -> None:
    assert "</script" not in _static("stepper.js").lower()
    assert "</style" not in _static("stepper.css").lower()


@pytest.mark.parametrize("limit", [5000, 40])
def test_fragment_is_deterministic(first_switch_trace: Path, limit: int) -> None:
    trace = load_trace(first_switch_trace)
    assert stepper_fragment(trace, limit) == stepper_fragment(trace, limit)
