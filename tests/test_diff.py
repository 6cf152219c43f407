"""`diff_traces`: where two traces part, in steps mode and in align mode."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from stacktrace_lab.diff import compare as compare_module
from stacktrace_lab.diff import diff_traces, render
from stacktrace_lab.diff.align import AlignmentPlan, align_traces, pair_keys
from stacktrace_lab.diff.compare import Segment, compared_columns, scan
from stacktrace_lab.errors import BadInput
from stacktrace_lab.record.recorder import Recording, RecordOptions, record
from stacktrace_lab.scenario import load_scenario
from stacktrace_lab.trace import load_trace
from stacktrace_lab.trace.format import METADATA_KEY

Record = Callable[..., Recording]

ADD = """
main:
    mov $1, %rax
    add ${imm}, %rax
    mov %rax, %rbx
    push %rbx
    pop %rbx
    ret
"""
ADD_STEP = 1  # the row of `add` (row 0 is the first mov)


def first_switch_with(insertion: str) -> str:
    """The seed's source with `insertion` before `movabs $green_base` (before the switch)."""
    source = load_scenario("first-switch").source
    anchor = "    movabs $green_base, %rax"
    assert anchor in source
    # Written into a TOML basic string by the fixture: keep `\\n` escaped.
    return source.replace(anchor, insertion + anchor).replace("\\", "\\\\")


FIRST_SWITCH_STACKS = (("main", 65536), ("green", 48))


def test_recording_a_builtin_twice_is_the_same(tmp_path: Path) -> None:
    scenario = load_scenario("first-switch")
    a = record(scenario, tmp_path / "a.parquet").path
    b = record(scenario, tmp_path / "b.parquet").path
    diff = diff_traces(a, b)
    assert diff.same
    assert diff.first_divergence is None
    assert diff.columns == ()
    assert diff.metadata == ()
    assert "result: SAME" in render(diff, "text")


def test_changed_immediate_diverges_at_the_instruction_and_names_rax(
    record_source: Record,
) -> None:
    a = record_source(ADD.format(imm=0)).path
    b = record_source(ADD.format(imm=5)).path
    diff = diff_traces(a, b)
    assert not diff.same
    d = diff.first_divergence
    assert d is not None and d.a is not None and d.b is not None
    # Convention: the first row where any compared column differs is the add itself
    # (its text); the register it wrote differs from the next row on.
    assert d.kind == "changed"
    assert (d.a.step, d.b.step) == (ADD_STEP, ADD_STEP)
    assert d.columns == ("insn",)
    assert (d.a.insn, d.b.insn) == ("addq $0, %rax", "addq $5, %rax")
    after = {r.name: (r.a, r.b) for r in d.after}
    assert after["rax"] == (1, 6)
    counts = {c.column: c for c in diff.columns}
    assert counts["rax"].first_a == ADD_STEP + 1
    assert counts["insn"].steps == 1
    assert counts["rbx"].first_a == ADD_STEP + 2  # mov %rax, %rbx carried it on
    text = render(diff, "text")
    assert "rax" in text
    assert "addq $5, %rax" in text
    assert any(m.field == "source" for m in diff.metadata)


def test_ignoring_insn_moves_the_divergence_to_the_register(record_source: Record) -> None:
    a = record_source(ADD.format(imm=0)).path
    b = record_source(ADD.format(imm=5)).path
    diff = diff_traces(a, b, ignore=["insn", "rflags", "source", "code"])
    d = diff.first_divergence
    assert d is not None and d.a is not None
    assert d.a.step == ADD_STEP + 1
    assert [(r.name, r.a, r.b) for r in d.registers] == [("rax", 1, 6)]
    assert "insn" not in diff.compared and "rflags" not in diff.compared
    assert diff.ignored == ("insn", "rflags", "source", "code")


def test_written_bytes_and_stack_bytes_are_pinpointed(record_source: Record) -> None:
    a = load_trace(record_source(ADD.format(imm=0x11)).path)
    b = load_trace(record_source(ADD.format(imm=0x33)).path)
    push = 3
    diff = diff_traces(a, b, ignore=["insn", "rax", "rbx", "rflags"])
    d = diff.first_divergence
    assert d is not None and d.a is not None
    assert d.a.step == push
    assert d.columns == ("writes",)
    (writes,) = d.accesses
    assert writes.entries == (0,)
    assert writes.a[0].data == (0x12).to_bytes(8, "little")
    assert writes.b[0].data == (0x34).to_bytes(8, "little")

    # Without the writes, the first difference is the pushed byte on the stack after it.
    diff = diff_traces(a, b, ignore=["insn", "rax", "rbx", "rflags", "writes"])
    d = diff.first_divergence
    assert d is not None and d.a is not None and d.b is not None
    assert d.a.step == push + 1
    (stack,) = d.stacks
    assert stack.column == "stack__main"
    assert stack.differing_bytes == 1
    (byte,) = stack.ranges
    window = a.metadata.snapshots["main"]
    slot = load_trace(a.path).rows(["rsp"])["rsp"][push + 1]  # rsp after the push
    assert byte.address == slot == window.base + byte.start
    # The range is the whole stack word holding the byte, so it shows as a value.
    word = (0x12).to_bytes(8, "little"), (0x34).to_bytes(8, "little")
    assert (byte.stop - byte.start, byte.a, byte.b) == (8, *word)
    assert "bytes [" in render(diff, "text")


def test_nop_before_the_switch_in_align_mode_is_one_inserted_step(
    record_source: Record,
) -> None:
    a = record_source(first_switch_with(""), stacks=FIRST_SWITCH_STACKS).path
    b = record_source(first_switch_with("    nop\n"), stacks=FIRST_SWITCH_STACKS).path

    aligned = diff_traces(a, b, align=True)
    assert aligned.alignment is not None
    assert aligned.alignment.inserted == 1
    assert aligned.alignment.deleted == 0
    assert (aligned.alignment.replaced_a, aligned.alignment.replaced_b) == (0, 0)
    assert aligned.alignment.total_gaps == 1
    assert aligned.alignment.matched == aligned.a.steps
    # Otherwise equal: every paired step (return address into moved code, hello's
    # address planted on the green stack, rip) and the stop and final state.
    assert aligned.columns == ()
    assert {m.field for m in aligned.metadata} == {"source", "code"}
    d = aligned.first_divergence
    assert d is not None and d.b is not None
    assert d.kind == "inserted" and d.a is None and d.b.insn == "nop"
    assert "1 step(s) inserted in B" in render(aligned, "text")

    # Step by step, everything after the nop differs.
    stepwise = diff_traces(a, b)
    assert {"rip", "insn", "symbol", "stack__green"} <= {c.column for c in stepwise.columns}


def test_the_address_map_is_the_same_read_a_few_rows_at_a_time(
    record_source: Record, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The address map reads the paired rows' rips in batches: batches of 3 rows (cut
    inside segments, across the nop's gap) give the map of one batch for everything."""
    from stacktrace_lab.diff import align as align_module

    a = load_trace(record_source(first_switch_with(""), stacks=FIRST_SWITCH_STACKS).path)
    b = load_trace(record_source(first_switch_with("    nop\n"), stacks=FIRST_SWITCH_STACKS).path)
    plan = align_traces(a, b)
    assert len(plan.segments()) == 2
    whole = align_module.AddressMap.build(a, b, plan)
    monkeypatch.setattr(align_module, "_MAP_ROWS", 3)
    batched = align_module.AddressMap.build(a, b, plan)
    for one, other in ((whole, batched), (whole.executed, batched.executed)):
        assert one is not None and other is not None
        assert one._from.tolist() == other._from.tolist()
        assert one._delta.tolist() == other._delta.tolist()
    # The nop moved everything after it: some executed address maps elsewhere.
    assert whole.executed is not None and any(whole.executed._delta.tolist())


def test_align_mode_pairs_a_changed_instruction_as_replaced(record_source: Record) -> None:
    a = record_source(ADD.format(imm=0)).path
    b = record_source(ADD.format(imm=5)).path
    diff = diff_traces(a, b, align=True)
    assert diff.alignment is not None
    assert (diff.alignment.replaced_a, diff.alignment.replaced_b) == (1, 1)
    d = diff.first_divergence
    assert d is not None and d.kind == "replaced"
    counts = {c.column: c for c in diff.columns}
    assert counts["rax"].first_a == ADD_STEP + 1


def test_alignment_window_limits_the_divergent_region(record_source: Record) -> None:
    a = load_trace(record_source(ADD.format(imm=0)).path)
    b = load_trace(record_source(ADD.format(imm=5)).path)
    plan = align_traces(a, b, window=0)
    assert plan.window_limited
    assert [op.kind for op in plan.opcodes] == ["equal", "unaligned", "equal"]


def test_one_trace_stopping_early_is_reported_as_an_end(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    scenario = load_scenario(write_scenario(ADD.format(imm=0)))
    a = record(scenario, tmp_path / "short.parquet", RecordOptions(max_steps=3)).path
    b = record(scenario, tmp_path / "long.parquet").path
    diff = diff_traces(a, b)
    d = diff.first_divergence
    assert d is not None and d.kind == "a-ended"
    assert d.b is not None and d.b.step == 3
    assert d.b_rows == diff.b.steps - 3
    assert diff.columns == ()
    assert {"stop", "options"} <= {m.field for m in diff.metadata}


def test_tool_versions_are_a_note_not_a_difference(
    first_switch_trace: Path, tmp_path: Path
) -> None:
    table = pq.read_table(first_switch_trace)
    meta = json.loads(pq.read_metadata(first_switch_trace).metadata[METADATA_KEY.encode()])
    meta["tool"]["unicorn"] = "9.9.9"
    copy = tmp_path / "newer-unicorn.parquet"
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta)}), copy)
    diff = diff_traces(first_switch_trace, copy)
    assert diff.same
    assert any("unicorn" in note and "9.9.9" in note for note in diff.notes)


def test_ignore_names_are_checked_and_expanded(first_switch_trace: Path) -> None:
    diff = diff_traces(first_switch_trace, first_switch_trace, ignore=["green", "r1*", " "])
    assert "stack__green" in diff.ignored
    assert {"r10", "r11", "r12", "r13", "r14", "r15"} <= set(diff.ignored)
    assert "stack__green" not in diff.compared
    with pytest.raises(BadInput, match="unknown column or field 'rsx'"):
        diff_traces(first_switch_trace, first_switch_trace, ignore=["rsx"])


def test_chunked_scan_across_row_groups_counts_the_same(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    path = write_scenario(first_switch_with("    nop\n"), stacks=FIRST_SWITCH_STACKS)
    scenario = load_scenario(path)
    other = load_scenario(write_scenario(first_switch_with(""), stacks=FIRST_SWITCH_STACKS))
    a = load_trace(record(other, tmp_path / "a.parquet", RecordOptions(row_group_size=3)).path)
    b = load_trace(record(scenario, tmp_path / "b.parquet", RecordOptions(row_group_size=5)).path)
    columns = compared_columns(a, b, ())
    segments = [Segment(0, 0, min(a.num_rows, b.num_rows))]
    whole = scan(a, b, segments, columns)
    chunked = scan(a, b, segments, columns, chunk_rows=2)
    assert whole.counts == chunked.counts and whole.first == chunked.first
    assert whole.counts["rip"] > 0
    # Different row group sizes are a storage detail, not a difference.
    assert "options" not in {m.field for m in diff_traces(a, b).metadata}


def test_unchanged_row_groups_are_skipped_without_hiding_differences(
    write_scenario: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def traces(rows_per_group: int) -> tuple[Path, Path]:
        options = RecordOptions(row_group_size=rows_per_group)
        out = []
        for imm in (0, 5):
            scenario = load_scenario(write_scenario(ADD.format(imm=imm)))
            out.append(record(scenario, tmp_path / f"{imm}-{rows_per_group}.parquet", options).path)
        return out[0], out[1]

    reference = diff_traces(*traces(65536))  # one row group: always decoded
    decoded: list[int] = []
    original = compare_module.RowCursor.read

    def counting_read(self: compare_module.RowCursor, start: int, stop: int) -> object:
        decoded.append(start)
        return original(self, start, stop)

    monkeypatch.setattr(compare_module.RowCursor, "read", counting_read)
    a, b = (load_trace(t) for t in traces(1))
    result = scan(a, b, [Segment(0, 0, a.num_rows)], compared_columns(a, b, ()))
    assert {c.column: c.steps for c in reference.columns} == result.counts
    assert {c.column: (c.first_a, c.first_b) for c in reference.columns} == result.first
    # Row 0 (the first mov) is byte-identical in every column: never decoded.
    assert 0 not in decoded and ADD_STEP in decoded


def test_groups_before_a_shorter_end_are_skipped(
    write_scenario: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = load_scenario(write_scenario(ADD.format(imm=0)))
    short = RecordOptions(max_steps=5, row_group_size=2)
    a = load_trace(record(scenario, tmp_path / "a.parquet", short).path)
    b = load_trace(record(scenario, tmp_path / "b.parquet", RecordOptions(row_group_size=2)).path)
    assert (a.num_rows, b.num_rows) == (5, 6)  # groups [0,2) [2,4) shared; [4,5) vs [4,6) not
    decoded: list[int] = []
    original = compare_module.RowCursor.read

    def counting_read(self: compare_module.RowCursor, start: int, stop: int) -> object:
        decoded.append(start)
        return original(self, start, stop)

    monkeypatch.setattr(compare_module.RowCursor, "read", counting_read)
    result = scan(a, b, [Segment(0, 0, 5)], compared_columns(a, b, ()))
    assert result.counts == {}
    assert set(decoded) == {4}


def test_json_has_the_first_divergence_under_its_own_key(record_source: Record) -> None:
    a = record_source(ADD.format(imm=0)).path
    b = record_source(ADD.format(imm=5)).path
    doc = json.loads(render(diff_traces(a, b), "json"))
    assert doc["same"] is False
    assert doc["first_divergence"]["a"]["step"] == ADD_STEP
    assert doc["first_divergence"]["after"][0]["name"] == "rax"
    assert doc["columns"]["rax"]["first_step_a"] == ADD_STEP + 1
    assert "first divergent step" in doc["convention"]


def test_markdown_is_a_job_summary(record_source: Record) -> None:
    a = record_source(ADD.format(imm=0)).path
    b = record_source(ADD.format(imm=5)).path
    md = render(diff_traces(a, b), "markdown")
    assert md.startswith("### stacktrace-lab diff: different")
    assert "| insn | `addq $0, %rax` | `addq $5, %rax` |" in md
    assert "| `rax` after this step | 0x1 | 0x6 |" in md
    assert "```diff" in md


def _check_plan(plan: AlignmentPlan, a: np.ndarray, b: np.ndarray) -> None:
    """The blocks cover both sequences in order, and every `equal` block is equal."""
    i = j = 0
    for op in plan.opcodes:
        assert (op.a_start, op.b_start) == (i, j)
        if op.kind == "equal":
            assert np.array_equal(a[op.a_start : op.a_stop], b[op.b_start : op.b_stop])
        i, j = op.a_stop, op.b_stop
    assert (i, j) == (len(a), len(b))


def test_pair_keys_aligns_a_loop_changed_in_every_iteration() -> None:
    body = np.arange(1, 33, dtype=np.int64)
    a = np.tile(body, 3000)
    b = np.tile(np.insert(body, 10, 99), 3000)  # one instruction more per iteration
    plan = pair_keys(a, b)
    _check_plan(plan, a, b)
    gaps = plan.gaps()
    assert not plan.window_limited
    assert len(gaps) == 3000 and {g.kind for g in gaps} == {"inserted"}
    assert sum(s.length for s in plan.segments()) == len(a)  # every row of A paired


def test_pair_keys_on_random_edits_is_a_valid_alignment() -> None:
    rng = np.random.default_rng(14)
    for _ in range(50):
        a = rng.integers(0, 6, size=int(rng.integers(0, 400)))
        b = a.copy()
        for _ in range(int(rng.integers(0, 6))):
            at = int(rng.integers(0, len(b) + 1))
            if rng.random() < 0.5 and len(b):
                b = np.delete(b, min(at, len(b) - 1))
            else:
                b = np.insert(b, at, rng.integers(0, 9, size=int(rng.integers(1, 4))))
        _check_plan(pair_keys(a, b), a, b)
        _check_plan(pair_keys(a, b, window=3), a, b)
