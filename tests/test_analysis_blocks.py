"""The analysis pass works on long traces a block of steps at a time; the blocks must
not show: a pass with tiny blocks gives the same facts as one block for the trace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from stacktrace_lab.analysis import events
from stacktrace_lab.analysis.kinds import Kind
from stacktrace_lab.analysis.memory import StepKinds, StepRsp
from stacktrace_lab.trace import Trace, load_trace

GOLDENS = Path(__file__).resolve().parent.parent / "traces"


@pytest.mark.parametrize("name", ["green-threads", "green-threads-clobber", "first-switch"])
def test_last_writers_found_in_small_blocks_are_those_of_one_block(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace = load_trace(GOLDENS / f"{name}.parquet")
    whole = events.derive_facts(trace)
    assert trace.num_rows < events._WRITER_BLOCK
    # Blocks of 7 steps: a ret's slot is mostly written in an earlier block (carried).
    monkeypatch.setattr(events, "_WRITER_BLOCK", 7)
    blocks = events.derive_facts(trace)
    assert (whole.returns.writer >= 0).any()
    for field in ("writer", "origin", "slot", "value", "entry_rsp"):
        assert np.array_equal(getattr(whole.returns, field), getattr(blocks.returns, field))
    assert whole.planted_steps.tolist() == blocks.planted_steps.tolist()


def test_rsp_stack_is_a_view_of_owners_only_while_rsp_stays_in_the_stacks() -> None:
    facts = events.derive_facts(load_trace(GOLDENS / "green-threads.parquet"))
    assert (facts.rsp_stack >= 0).all() and np.shares_memory(facts.rsp_stack, facts.owners)
    assert not facts.owners.flags.writeable
    overflow = events.derive_facts(load_trace(GOLDENS / "first-switch-overflow.parquet"))
    below = overflow.rsp_stack < 0
    # rsp runs under the green stack's base: those steps are the stack's own (owners),
    # in no stack for rsp_stack, so the two are separate arrays here.
    assert below.sum() == 207 and (overflow.owners[:-1][below] >= 0).all()
    assert not np.shares_memory(overflow.rsp_stack, overflow.owners)
    assert np.array_equal(overflow.rsp_owner[~below], overflow.rsp_stack[~below])


def _rsp_column(trace: Trace) -> np.ndarray:
    return np.concatenate(
        [np.asarray(g.column("rsp").to_pylist(), np.uint64) for g in trace.iter_row_groups(["rsp"])]
    )


@pytest.mark.parametrize("name", ["green-threads", "first-switch-overflow", "first-switch"])
def test_the_compact_rsp_answers_as_the_trace_column(name: str) -> None:
    trace = load_trace(GOLDENS / f"{name}.parquet")
    column = _rsp_column(trace)
    rsp = events.derive_facts(trace).rsp
    assert rsp.size == column.size == len(rsp)
    assert np.array_equal(rsp[:], column) and rsp[:].dtype == np.uint64
    steps = np.array([0, 5, column.size - 1, 3, 3, -1], dtype=np.int64)
    assert np.array_equal(rsp[steps], column[steps])
    mask = column % 16 == 8
    assert np.array_equal(rsp[mask], column[mask])
    assert np.array_equal(rsp[7:40:3], column[7:40:3])
    assert int(rsp[-1]) == int(column[-1]) and isinstance(rsp[4], np.uint64)
    with pytest.raises(IndexError):
        rsp[column.size]


def test_the_compact_rsp_keeps_high_halves_that_change_between_blocks() -> None:
    # Stacks more than 4 GiB apart (a thread's stack against the main one), crossing
    # the blocks `fill` is given at and within them.
    rng = np.random.default_rng(19)
    high = np.repeat(np.array([0x7FFF, 0x7FFF, 0x1, 0x7FFF, 0x2, 0x2], np.uint64), 50)
    values = (high << np.uint64(32)) | rng.integers(0, 1 << 32, high.size, dtype=np.uint64)
    rsp = StepRsp.empty(values.size)
    for lo in range(0, values.size, 70):
        rsp.fill(lo, values[lo : lo + 70])
    assert np.array_equal(rsp[:], values)
    steps = rng.integers(-values.size, values.size, 500)
    assert np.array_equal(rsp[steps], values[steps])
    mask = rng.random(values.size) < 0.3
    assert np.array_equal(rsp[mask], values[mask])
    assert np.array_equal(rsp[33:260:7], values[33:260:7])
    assert [int(rsp[i]) for i in range(values.size)] == values.tolist()
    assert np.array_equal(StepRsp.of(values)[:], values)


@pytest.mark.parametrize("name", ["green-threads", "first-switch-overflow", "first-switch"])
def test_the_compact_kinds_answer_as_the_kind_column(name: str) -> None:
    trace = load_trace(GOLDENS / f"{name}.parquet")
    column = np.concatenate(
        [events._kinds(g.column("kind")) for g in trace.iter_row_groups(["kind"])]
    )
    kinds = events.derive_facts(trace).kind
    assert len(kinds) == column.size and (column != Kind.OTHER).any()
    assert np.array_equal(kinds[:], column) and kinds[:].dtype == np.uint8
    assert np.array_equal(kinds[5:60], column[5:60])
    assert np.array_equal(kinds[3:90:4], column[3:90:4])
    steps = np.array([0, column.size - 1, 7, 7, -2], dtype=np.int64)
    assert np.array_equal(kinds[steps], column[steps])
    assert [int(kinds[i]) for i in range(column.size)] == column.tolist()
    assert np.array_equal(StepKinds.of(column)[:], column)
    for kind in (Kind.CALL, Kind.RET):
        assert np.array_equal(kinds.steps_of(kind), np.flatnonzero(column == kind))


def test_a_row_group_read_in_batches_is_the_row_group() -> None:
    trace = load_trace(GOLDENS / "green-threads.parquet")
    columns = ["step", "rsp", "insn", *(w.column for w in trace.metadata.snapshots.values())]
    whole = trace.row_group(0, columns)
    batches = list(trace.row_group_batches(0, columns, rows=100))
    assert len(batches) > 3 and all(b.num_rows <= 100 for b in batches)
    assert pa.concat_tables(batches).equals(whole)


def test_snapshot_windows_read_in_small_batches_are_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stacktrace_lab.report import heatmap

    facts = events.derive_facts(load_trace(GOLDENS / "green-threads.parquet"))
    keys = list(facts.meta.snapshots)
    steps = np.unique(np.linspace(0, facts.steps - 1, 40).astype(np.int64))
    whole = heatmap.read_snapshots(facts, keys, steps)
    monkeypatch.setattr(heatmap, "_SNAPSHOT_BATCH", 7)
    batched = heatmap.read_snapshots(facts, keys, steps)
    assert keys and all(whole[k].any() for k in keys)
    assert all(np.array_equal(whole[k], batched[k]) for k in keys)


def test_one_value_read_a_batch_at_a_time_is_the_rows_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`Trace.value_at` (a snapshot window's bytes at one step, without decoding its
    whole row group) answers as a one-row `slice`, at a batch's edges too."""
    from stacktrace_lab.trace import reader

    trace = load_trace(GOLDENS / "green-threads.parquet")
    column = trace.metadata.snapshots["main"].column
    monkeypatch.setattr(reader, "_VALUE_BATCH", 7)
    steps = [0, 6, 7, 8, 1000, trace.num_rows - 1]
    values = [trace.value_at(step, column) for step in steps]
    assert values == [trace.slice(s, s + 1, [column]).column(0)[0].as_py() for s in steps]
    assert len(set(values)) > 2  # the window changes: a wrong row would show
    assert trace.value_at(8, "rsp") == int(trace.column("rsp")[8])
    for outside in (-1, trace.num_rows):
        with pytest.raises(IndexError):
            trace.value_at(outside, column)


def test_zoom_spans_and_write_marks_do_not_depend_on_their_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The heatmap's write marks filled a few writes at a time are those of one block,
    and a stack's first and last steps are found without listing its steps."""
    from stacktrace_lab.report import heatmap

    facts = events.derive_facts(load_trace(GOLDENS / "green-threads-clobber.parquet"))
    mask = facts.rsp_owner == 1
    on = np.flatnonzero(mask)
    assert heatmap._first_and_stop(mask) == (int(on[0]), int(on[-1]) + 1)
    assert heatmap._first_and_stop(np.zeros(5, dtype=np.bool_)) is None
    whole = heatmap.heatmap_png(facts)
    monkeypatch.setattr(heatmap, "_MARK_BLOCK", 5)
    assert heatmap.heatmap_png(facts) == whole
