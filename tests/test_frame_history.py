"""The frame history, computed with numpy, against the plain loop over every call and ret
that it replaced (kept here as the reference): the same frames, the same innermost frame
after every event, on every built-in scenario and every switch technique."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stacktrace_lab.analysis.events import TraceFacts, derive_facts, stack_index
from stacktrace_lab.analysis.transfers import Landing
from stacktrace_lab.explore import backtrace
from stacktrace_lab.explore.backtrace import (
    CALL,
    JUMP,
    PLANTED,
    START,
    FrameNode,
    backtraces,
    frame_history,
    last_index_per_value,
)
from stacktrace_lab.record.recorder import RecordOptions, record
from stacktrace_lab.scenario import builtin_names, load_scenario
from stacktrace_lab.trace import load_trace

SWITCHES = Path(__file__).parent / "switches"
SCENARIOS = [*builtin_names(), *sorted(str(p) for p in SWITCHES.glob("*.toml"))]


def reference_frame_history(
    facts: TraceFacts,
) -> tuple[list[FrameNode], list[int], list[int], list[int], tuple[int, ...], list[int]]:
    """The loop of commit 89b56b2, one Python step per call and ret."""
    meta = facts.meta
    w, r = facts.writes, facts.returns
    calls = facts.calls
    call_stack = facts.rsp_stack[calls].tolist()
    call_slot = (facts.rsp[calls] - np.uint64(8)).tolist()
    call_target = facts.call_targets.tolist()
    push = np.searchsorted(w.step, calls)
    has_push = push < len(w)
    has_push[has_push] = w.step[push[has_push]] == calls[has_push]
    pushed = np.where(has_push, facts.call_pushed, 0)
    call_back = [
        int(v) if ok else None
        for v, ok in zip(
            np.broadcast_to(pushed, calls.shape).tolist(), has_push.tolist(), strict=True
        )
    ]
    transfers = facts.transfers
    landing_of = dict(zip(transfers.step.tolist(), range(len(transfers)), strict=True))
    landing = transfers.landing.tolist()
    landing_stack = stack_index(facts.stacks, transfers.rsp).tolist()
    landing_slot = (transfers.rsp - np.uint64(8)).tolist()
    landing_target = transfers.target.tolist()
    jumps = transfers.step[~transfers.is_ret]
    ret_stack = facts.rsp_stack[r.step].tolist()
    ret_slot = r.slot.tolist()
    nodes: list[FrameNode] = []
    ends: list[int] = []

    def push_node(p: int, s: int, f: int, step: int, h: str, slot: int, b: int | None) -> int:
        nodes.append(FrameNode(p, s, f, step, h, slot, b))
        ends.append(-1)
        return len(nodes) - 1

    tops = [-1] * len(facts.stacks)
    first_stack = int(facts.rsp_stack[0]) if facts.steps else -1
    entry = meta.symbols.get(meta.scenario.entry)
    if first_stack >= 0 and entry is not None:
        tops[first_stack] = push_node(
            -1, first_stack, entry, -1, START, int(facts.rsp[0]), facts.sentinel
        )
    initial = tuple(tops)
    out_step: list[int] = []
    out_stack: list[int] = []
    out_top: list[int] = []
    steps = np.concatenate([calls, r.step, jumps])
    n_calls, n_calls_rets = calls.size, calls.size + r.step.size
    order = np.argsort(steps, kind="stable")
    for e, step in zip(order.tolist(), steps[order].tolist(), strict=True):
        t = landing_of.get(step) if e >= n_calls else None
        if e < n_calls:
            s, slot = call_stack[e], call_slot[e]
        elif t is None:
            s, slot = ret_stack[e - n_calls], ret_slot[e - n_calls]
        else:
            s, slot = landing_stack[t], landing_slot[t]
        if s < 0:
            continue
        top = tops[s]
        kind = Landing(landing[t]) if t is not None else None
        if kind not in (Landing.TRAMPOLINE, Landing.OTHER) or e < n_calls_rets:
            while top >= 0 and nodes[top].slot <= slot:
                ends[top] = step
                top = nodes[top].parent
        if e < n_calls:
            top = push_node(top, s, call_target[e], step, CALL, slot, call_back[e])
        elif kind == Landing.ENTRY and t is not None:
            entered_by = PLANTED if e < n_calls_rets else JUMP
            top = push_node(top, s, landing_target[t], step, entered_by, slot, None)
        tops[s] = top
        out_step.append(step)
        out_stack.append(s)
        out_top.append(top)
    return nodes, out_step, out_stack, out_top, initial, ends


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: Path(s).stem)
def test_frame_history_is_the_loops(scenario: str, tmp_path: Path) -> None:
    path = tmp_path / "trace.parquet"
    record(load_scenario(scenario), path)
    facts = derive_facts(load_trace(path))
    history = frame_history(facts)
    nodes, step, stack, top, initial, ends = reference_frame_history(facts)
    assert len(nodes) > 1
    assert list(history.nodes) == nodes
    assert history.step.tolist() == step
    assert history.stack.tolist() == stack
    assert history.top.tolist() == top
    assert history.initial == initial
    assert history.ends.tolist() == ends


def test_frame_history_of_a_long_loop_with_two_stacks(tmp_path: Path) -> None:
    """The benchmark's load (nested calls on a second stack), long enough that frames
    are dropped thousands of times."""
    path = tmp_path / "call-heavy.parquet"
    scenario = Path(__file__).parents[1] / "benchmarks" / "call-heavy.toml"
    record(load_scenario(scenario), path, RecordOptions(max_steps=20_000))
    facts = derive_facts(load_trace(path))
    history = frame_history(facts)
    nodes, step, stack, top, initial, ends = reference_frame_history(facts)
    assert len(nodes) > 1000
    assert list(history.nodes) == nodes
    assert (history.step.tolist(), history.stack.tolist(), history.top.tolist()) == (
        step,
        stack,
        top,
    )
    assert history.ends.tolist() == ends and history.initial == initial
    # The backtraces read from it: the innermost frame at the last step is the callee.
    found = backtraces(facts, facts.steps - 1, history)
    assert found[0].running and found[0].frames


def test_frame_history_in_tiny_blocks_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its lookups and next-drop search go a block of positions at a time (the last
    block first in the search's first pass): blocks of 5 events give the frames of
    one block for the whole trace."""
    path = tmp_path / "call-heavy.parquet"
    scenario = Path(__file__).parents[1] / "benchmarks" / "call-heavy.toml"
    record(load_scenario(scenario), path, RecordOptions(max_steps=20_000))
    facts = derive_facts(load_trace(path))
    whole = frame_history(facts)
    assert whole.step.size < backtrace._LOOKUP_BLOCK
    monkeypatch.setattr(backtrace, "_LOOKUP_BLOCK", 5)
    blocks = frame_history(facts)
    assert list(blocks.nodes) == list(whole.nodes) and len(whole.nodes) > 1000
    for name in ("step", "stack", "top", "ends"):
        assert np.array_equal(getattr(blocks, name), getattr(whole, name)), name
    assert blocks.initial == whole.initial


def test_last_index_per_value() -> None:
    values = np.array([2, 2, -1, 0, 2, 0, 0, -1], dtype=np.int16)
    assert last_index_per_value(values, 4).tolist() == [6, -1, 4, -1]
    assert last_index_per_value(values[:0], 2).tolist() == [-1, -1]


@pytest.mark.parametrize("scenario", ["green-threads-clobber", "first-switch-overflow"])
def test_streamed_results_do_not_depend_on_row_groups(scenario: str, tmp_path: Path) -> None:
    """The same run recorded in row groups of 7 rows, so every pass that streams row
    groups crosses dozens of boundaries or more: the analysis pass, the frames, the
    backtraces, the invariants (callee-saved reads registers a column at a time) and
    the stepper's rsp chart are the same as from one row group per 65,536 rows."""
    from stacktrace_lab.analysis import check
    from stacktrace_lab.stepper.data import rsp_chart

    whole, tiny = tmp_path / "whole.parquet", tmp_path / "tiny.parquet"
    record(load_scenario(scenario), whole)
    record(load_scenario(scenario), tiny, RecordOptions(row_group_size=7))
    a, b = load_trace(whole), load_trace(tiny)
    assert a.num_row_groups == 1 and b.num_row_groups > 30
    fa, fb = derive_facts(a), derive_facts(b)
    for name in ("rsp", "kind"):  # per step, compact: read whole as arrays
        assert np.array_equal(getattr(fa, name)[:], getattr(fb, name)[:]), name
    for name in ("calls", "call_targets", "call_pushed"):
        assert np.array_equal(getattr(fa, name), getattr(fb, name)), name
    # What each call pushed, straight from the rows: its first write, when 8 bytes.
    rows = a.slice(0, a.num_rows, ["writes"]).column("writes").to_pylist()
    expected = [
        int.from_bytes(rows[c][0]["data"], "little") if rows[c] and rows[c][0]["size"] == 8 else 0
        for c in fa.calls.tolist()
    ]
    assert fa.call_pushed.tolist() == expected and any(expected)
    for name in ("step", "addr", "size"):
        assert np.array_equal(getattr(fa.writes, name), getattr(fb.writes, name)), name
    for name in ("step", "slot", "value", "entry_rsp", "origin", "writer"):
        assert np.array_equal(getattr(fa.returns, name), getattr(fb.returns, name)), name
    ha, hb = frame_history(fa), frame_history(fb)
    assert list(ha.nodes) == list(hb.nodes)
    assert ha.top.tolist() == hb.top.tolist() and ha.ends.tolist() == hb.ends.tolist()
    for step in range(0, fa.steps, max(fa.steps // 7, 1)):
        assert [bt.to_json() for bt in backtraces(fa, step, ha)] == [
            bt.to_json() for bt in backtraces(fb, step, hb)
        ]
    ca, cb = check(a, fa), check(b, fb)
    assert [r.to_json() for r in ca.results] == [r.to_json() for r in cb.results]
    assert not ca.holds  # each scenario breaks an invariant: there is something to compare
    assert rsp_chart(a, []) == rsp_chart(b, [])
