"""The bytes an overflow reached under a stack's base, stored as `<stack>__below`.

The tutorial's C program (examples/first_switch.c, gcc -static) switches to a
48-byte stack from calloc and printf runs about 500 bytes under its base,
over the heap in front of it. The recorder stores those bytes in a window of
their own; every reader takes it; the heatmap draws what the overflow wrote
over (the chunk header at index -8 first).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from matplotlib.text import Text

from stacktrace_lab.analysis import derive_facts
from stacktrace_lab.cli import main
from stacktrace_lab.errors import BadInput
from stacktrace_lab.examples import build_example, compiler_missing
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.report import heatmap
from stacktrace_lab.report.figures import plot_style
from stacktrace_lab.trace.format import METADATA_KEY, snapshot_misfit
from stacktrace_lab.trace.reader import load_trace

STACK = "calloc_48"
BELOW = "calloc_48__below"


@pytest.fixture(scope="module")
def c_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = compiler_missing("c-static")
    if why is not None:
        pytest.skip(f"cannot build the C example: {why}")
    out = tmp_path_factory.mktemp("overflow")
    program = build_example("c-static", out)
    return record_elf(program, out / "c.parquet", from_symbol="main").path


def test_the_recorder_stores_the_bytes_under_the_overflowed_base(c_trace: Path) -> None:
    trace = load_trace(c_trace)
    meta = trace.metadata
    stack = meta.region(STACK)
    below = meta.snapshots[BELOW]
    assert below.column == f"stack__{BELOW}"
    assert below.top == stack.base and below.size == 512  # the limit, next to the base
    assert meta.region_of(below.base) is not None and meta.region_of(below.base).kind == "heap"
    # The column is the memory there before each step: at step 0, before calloc
    # ran, the size field of malloc's top chunk (PREV_INUSE set) right under it.
    first = bytes(trace.slice(0, 1, [below.column]).column(0)[0].as_py())
    top_chunk = int.from_bytes(first[-8:], "little")
    assert top_chunk & 1 and top_chunk > 0x1000
    facts = derive_facts(trace)
    lowest = int(facts.rsp[facts.rsp_owner == facts.stacks.index(stack)].min())
    assert below.base <= lowest < stack.base  # it covers where rsp went


def test_every_command_reads_a_trace_with_an_overflow_window(
    c_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # replay compares every stored column, the overflow window's included, with memory.
    assert main(["replay", str(c_trace)]) == 0
    assert "replay matches all" in capsys.readouterr().out
    assert main(["diff", str(c_trace), str(c_trace)]) == 0
    assert "SAME" in capsys.readouterr().out
    assert main(["show", str(c_trace), "--step", "400"]) == 0
    assert main(["export", str(c_trace), "--to", "perfetto", "-o", str(tmp_path / "p.json")]) == 0
    assert main(["report", str(c_trace), "-o", str(tmp_path / "report")]) == 1  # it overflows
    capsys.readouterr()
    pytest.importorskip("duckdb")
    column = f"stack__{BELOW}"
    assert (
        main(["query", str(c_trace), f"SELECT octet_length({column}) AS n FROM raw LIMIT 1"]) == 0
    )
    assert "512" in capsys.readouterr().out


def test_the_heatmap_shows_what_the_overflow_overwrote(c_trace: Path) -> None:
    facts = derive_facts(load_trace(c_trace))
    stack = facts.meta.region(STACK)
    clobbered = heatmap.clobbered_slots(facts, stack, facts.meta.snapshots[BELOW])
    by_index = {c.index: c for c in clobbered}
    assert by_index[-8].before == 0x41  # the chunk header
    for slot in clobbered:
        assert slot.before != 0 and slot.index < 0
        assert facts.rsp_owner[slot.step] == facts.stacks.index(stack)
    with plot_style():
        figure = heatmap.heatmap_figure(facts)
    panel = next(ax for ax in figure.axes if ax.get_title(loc="left").startswith(STACK))
    assert panel.get_ylim()[0] <= -512  # drawn under the base
    texts = [t.get_text() for t in panel.findobj(Text)]
    assert not any("not stored" in t for t in texts)
    said = next(t for t in texts if "bytes stored" in t)
    assert f"overwrote {len(clobbered)} slots that held data ([-8] 0x41" in said


def test_the_format_rule_for_an_overflow_window() -> None:
    stacks = {"green": (0x1000, 0x1030)}
    assert snapshot_misfit("green", 0x1000, 0x30, stacks) is None
    assert snapshot_misfit("green__below", 0xF00, 0x100, stacks) is None
    assert snapshot_misfit("green__below", 0xF00, 0x80, stacks) == "does not end at 'green''s base"
    assert snapshot_misfit("blue__below", 0xF00, 0x100, stacks) == "is not of a stack region"
    assert snapshot_misfit("green", 0xF00, 0x100, stacks) == "is not inside its region"
    # A stack really called `x__below` keeps the ordinary rule.
    named = {"x__below": (0x2000, 0x2100), "x": (0x3000, 0x3100)}
    assert snapshot_misfit("x__below", 0x2000, 0x100, named) is None


def test_a_trace_whose_overflow_window_leaves_its_base_is_refused(
    c_trace: Path, tmp_path: Path
) -> None:
    table = pq.read_table(c_trace)
    doc = json.loads(table.schema.metadata[METADATA_KEY.encode()])
    doc["snapshots"][BELOW]["base"] -= 8  # now it ends 8 bytes under the base
    text = json.dumps(doc, sort_keys=True).encode()
    forged = tmp_path / "forged.parquet"
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: text}), forged)
    with pytest.raises(BadInput, match=f"snapshot '{BELOW}' does not end at '{STACK}''s base"):
        load_trace(forged)


@pytest.fixture(scope="module")
def rust_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = compiler_missing("rust-static-pie")
    if why is not None:
        pytest.skip(f"cannot build the Rust example: {why}")
    out = tmp_path_factory.mktemp("overflow-rust")
    program = build_example("rust-static-pie", out)
    return record_elf(program, out / "rust.parquet", from_symbol="main").path


def test_the_rust_example_shows_the_392_bytes_in_a_zoom(rust_trace: Path) -> None:
    """The goal of issue 23: the 48-byte stack shows the 392 bytes the overflow ran
    over, which the whole run's axis squeezes into its last 3 %."""
    facts = derive_facts(load_trace(rust_trace))
    stack = facts.meta.region(STACK)
    k = facts.stacks.index(stack)
    lowest = int(facts.rsp[facts.rsp_owner == k].min())
    assert stack.base - lowest == 392
    below = facts.meta.snapshots[BELOW]
    assert below.base <= lowest and below.top == stack.base  # every byte rsp reached
    ((zoomed, first, stop),) = heatmap.zoom_spans(facts, list(facts.meta.stacks))
    on = (facts.rsp_owner == k).nonzero()[0]
    assert zoomed == stack and first <= int(on[0]) and int(on[-1]) < stop
    assert stop - first < facts.steps / 10
    with plot_style():
        figure = heatmap.heatmap_figure(facts)
    (zoom,) = [ax for ax in figure.axes if ax.get_title(loc="left").startswith("zoom on steps")]
    assert zoom.get_xlim() == (first, stop)
    assert zoom.get_ylim()[0] <= -392


def test_who_wrote_names_a_slot_under_the_base(
    c_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`calloc_48[-8]`, the heap chunk's header: malloc wrote 0x41 there, then printf's
    first push on the tiny stack wrote over it (the clobbered slot the heatmap marks)."""
    facts = derive_facts(load_trace(c_trace))
    clobber = {
        c.index: c
        for c in heatmap.clobbered_slots(
            facts, facts.meta.region(STACK), facts.meta.snapshots[BELOW]
        )
    }[-8]
    assert main(["who-wrote", str(c_trace), f"{STACK}[-8]", "--step", str(clobber.step)]) == 0
    before = capsys.readouterr().out
    assert "holds 0x41" in before and "_int_malloc" in before
    assert main(["who-wrote", str(c_trace), f"{STACK}[-8]", "--step", str(clobber.step + 1)]) == 0
    after = capsys.readouterr().out
    assert f"written at step {clobber.step} by `push" in after
    # Below the stored window: refused in one line that says how far down it goes.
    assert main(["who-wrote", str(c_trace), f"{STACK}[-520]"]) == 2
    assert "indices -512 to 40" in capsys.readouterr().err


def test_show_telescopes_the_slots_under_the_base(
    c_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While printf runs on the heap under the 48-byte stack, `show` lists the slots
    around rsp there (negative indexes) instead of "rsp is in no stack region"."""
    facts = derive_facts(load_trace(c_trace))
    stack = facts.meta.region(STACK)
    k = facts.stacks.index(stack)
    under = (facts.rsp_owner == k) & (facts.rsp[:] < stack.base)
    step = int(under.nonzero()[0][0])
    index = int(facts.rsp[step]) - stack.base
    assert main(["show", str(c_trace), "--step", str(step)]) == 0
    out = capsys.readouterr().out
    assert "is in no stack region" not in out
    # The stack's heading names it, with its label when it has one (`calloc(48) in main`).
    assert f"stack {STACK} (calloc(48) in main): " in out and f"rsp = {STACK}[{index}]" in out
    assert f" {index - index % 8} " in out  # rsp's own slot is listed
