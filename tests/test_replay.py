"""`stacktrace-lab replay`: re-running a trace's own program confirms it, and edits are caught."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stacktrace_lab.cli import main
from stacktrace_lab.record.recorder import Recording, RecordOptions, record
from stacktrace_lab.replay import replay
from stacktrace_lab.scenario import builtin_names, load_scenario
from stacktrace_lab.trace import load_trace
from stacktrace_lab.trace.format import METADATA_KEY


def _rewrite(
    source: Path,
    target: Path,
    edit: Callable[[pa.Table], pa.Table],
    edit_metadata: Callable[[dict[str, Any]], None] | None = None,
    row_group_size: int | None = None,
) -> Path:
    """Rewrite a trace with plain pyarrow, as a person editing it would, keeping the metadata."""
    raw = pq.read_metadata(source).metadata[METADATA_KEY.encode()]
    if edit_metadata is not None:
        doc = json.loads(raw)
        edit_metadata(doc)
        raw = json.dumps(doc, sort_keys=True).encode()
    table = edit(pq.read_table(source)).replace_schema_metadata({METADATA_KEY.encode(): raw})
    pq.write_table(table, target, row_group_size=row_group_size)
    return target


def _set_register(table: pa.Table, name: str, step: int, value: int) -> pa.Table:
    values = table.column(name).to_numpy().copy()
    values[step] = value
    index = table.schema.get_field_index(name)
    return table.set_column(index, table.schema.field(index), pa.array(values, pa.uint64()))


def _replay_cli(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, dict[str, Any]]:
    status = main(["replay", str(path), "--json"])
    return status, json.loads(capsys.readouterr().out)


def test_first_switch_replays_exactly(
    first_switch_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(first_switch_trace)]) == 0
    out = capsys.readouterr().out
    assert "replay matches all 19 steps" in out


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_replays(name: str, tmp_path: Path) -> None:
    recording = record(load_scenario(name), tmp_path / f"{name}.parquet")
    result = replay(load_trace(recording.path))
    assert result.difference is None, result.difference
    assert result.steps_compared == recording.metadata.steps


def test_an_edited_register_is_caught_naming_the_step(
    first_switch_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edited = _rewrite(
        first_switch_trace, tmp_path / "edited.parquet", lambda t: _set_register(t, "rcx", 7, 1)
    )
    status, verdict = _replay_cli(capsys, edited)
    assert status == 1
    assert verdict["matches"] is False
    assert verdict["difference"]["step"] == 7
    assert verdict["difference"]["columns"] == ["rcx"]
    assert verdict["difference"]["recorded"] == "0x1"
    assert verdict["difference"]["replayed"] == "0x40003e"
    assert verdict["steps_matched"] == 7

    assert main(["replay", str(edited)]) == 1
    out = capsys.readouterr().out
    assert "differs at step 7" in out and "rcx" in out


def _edit_writes(table: pa.Table) -> pa.Table:
    writes = table.column("writes").to_pylist()
    writes[6][0]["data"] = bytes(8)  # the store of hello's address now "wrote" zero
    index = table.schema.get_field_index("writes")
    field = table.schema.field(index)
    return table.set_column(index, field, pa.array(writes, field.type))


def _edit_snapshot(table: pa.Table) -> pa.Table:
    index = table.schema.get_field_index("stack__green")
    field = table.schema.field(index)
    rows = table.column(index).to_pylist()
    rows[15] = b"\x01" + rows[15][1:]
    return table.set_column(index, field, pa.array(rows, field.type))


def _edit_insn(table: pa.Table) -> pa.Table:
    index = table.schema.get_field_index("insn")
    texts = [str(t) for t in table.column(index).to_pylist()]
    texts[12] = "ret"
    return table.set_column(index, "insn", pa.array(texts).dictionary_encode())


def _edit_kind(table: pa.Table) -> pa.Table:
    index = table.schema.get_field_index("kind")
    kinds = table.column(index).to_pylist()
    kinds[12] = "other"  # gt_switch's ret
    return table.set_column(index, table.schema.field(index), pa.array(kinds).dictionary_encode())


@pytest.mark.parametrize(
    ("edit", "step", "column"),
    [
        (_edit_writes, 6, "writes"),
        (_edit_kind, 12, "kind"),
        (_edit_snapshot, 15, "stack__green"),
        (_edit_insn, 12, "insn"),
        (lambda t: _set_register(t, "rsp", 13, 0), 13, "rsp"),
    ],
)
def test_edits_of_other_columns_are_caught(
    first_switch_trace: Path,
    tmp_path: Path,
    edit: Callable[[pa.Table], pa.Table],
    step: int,
    column: str,
) -> None:
    edited = _rewrite(first_switch_trace, tmp_path / "edited.parquet", edit)
    result = replay(load_trace(edited))
    assert result.difference is not None
    assert (result.difference.step, result.difference.columns) == (step, (column,))


def test_a_late_edit_in_a_later_row_group(
    record_source: Callable[..., Recording], tmp_path: Path
) -> None:
    """Many small row groups, regrouped on rewrite: rows still line up by step."""
    loop = """
    main:
        mov $50, %ecx
    again:
        push %rcx
        pop %rdx
        dec %ecx
        jnz again
        hlt
    """
    recording = record_source(loop, RecordOptions(row_group_size=16))
    regrouped = _rewrite(recording.path, tmp_path / "same.parquet", lambda t: t, row_group_size=7)
    assert replay(load_trace(regrouped)).difference is None
    step = recording.metadata.steps - 10
    edited = _rewrite(
        recording.path,
        tmp_path / "late.parquet",
        lambda t: _set_register(t, "rdx", step, 12345),
        row_group_size=7,
    )
    difference = replay(load_trace(edited)).difference
    assert difference is not None and difference.step == step and difference.columns == ("rdx",)


def test_a_cut_trace_and_edited_metadata(
    first_switch_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A trace cut short no longer agrees with its own `steps`: it is refused
    # before replay starts (trace/validate.py), as every command refuses it.
    cut = _rewrite(first_switch_trace, tmp_path / "cut.parquet", lambda t: t.slice(0, 15))
    assert main(["replay", str(cut), "--json"]) == 2
    assert capsys.readouterr().err == (
        f"stacktrace-lab: error: {cut}: corrupt trace: 15 rows, but the metadata says steps = 19\n"
    )

    def louder(doc: dict[str, Any]) -> None:
        doc["output"]["stdout"] = "I LOVE WAKING UP ON AN OLD STACK!\n"

    lie = _rewrite(first_switch_trace, tmp_path / "lie.parquet", lambda t: t, louder)
    status, verdict = _replay_cli(capsys, lie)
    assert status == 1 and verdict["difference"]["columns"] == ["stdout"]

    def shorter_write(table: pa.Table) -> pa.Table:
        calls = table.column("syscall").to_pylist()
        (step,) = [i for i, call in enumerate(calls) if call is not None]
        assert (calls[step]["name"], calls[step]["result"]) == ("write", 33)
        calls[step] = {**calls[step], "result": 32}
        index = table.schema.get_field_index("syscall")
        edited = pa.array(calls, type=table.schema.field("syscall").type)
        return table.set_column(index, table.schema.field("syscall"), edited)

    lie = _rewrite(first_switch_trace, tmp_path / "lie2.parquet", shorter_write)
    status, verdict = _replay_cli(capsys, lie)
    assert status == 1 and verdict["difference"]["columns"] == ["syscalls"]


def test_an_edited_source_is_caught(
    first_switch_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The replay runs the recorded code; the reports show the source beside it.
    Editing `scenario.source` alone passed replay (issue 26): the source is
    assembled again and must give the recorded code."""

    def other_source(doc: dict[str, Any]) -> None:
        source = doc["scenario"]["source"]
        assert ".equ SSIZE, 48" in source
        doc["scenario"]["source"] = source.replace(".equ SSIZE, 48", ".equ SSIZE, 64", 1)

    lie = _rewrite(first_switch_trace, tmp_path / "src.parquet", lambda t: t, other_source)
    status, verdict = _replay_cli(capsys, lie)
    assert status == 1 and verdict["difference"]["columns"] == ["scenario.source"]
    assert "does not assemble to the recorded code" in verdict["difference"]["detail"]

    def comment_only(doc: dict[str, Any]) -> None:
        doc["scenario"]["source"] += "\n# a comment changes no byte\n"

    same = _rewrite(first_switch_trace, tmp_path / "same.parquet", lambda t: t, comment_only)
    assert _replay_cli(capsys, same)[0] == 0


def test_max_steps_and_fault_traces_replay(
    record_source: Callable[..., Recording],
) -> None:
    spin = "main:\n    inc %rax\n    jmp main\n"
    cut = record_source(spin, RecordOptions(max_steps=25))
    assert cut.metadata.stop.reason == "max_steps"
    assert replay(load_trace(cut.path)).difference is None
    fault = record_source("main:\n    movabs $0x10, %rax\n    movq (%rax), %rbx\n")
    assert fault.metadata.stop.reason == "fault"
    assert replay(load_trace(fault.path)).difference is None


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "missing.parquet")]) == 2
    assert "missing.parquet" in capsys.readouterr().err
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": np.arange(3)}), plain)
    assert main(["replay", str(plain)]) == 2
    assert "not a stacktrace-lab trace" in capsys.readouterr().err


def test_replay_runs_as_a_program(first_switch_trace: Path, tmp_path: Path) -> None:
    edited = _rewrite(
        first_switch_trace, tmp_path / "edited.parquet", lambda t: _set_register(t, "rax", 9, 7)
    )
    result = subprocess.run(
        [sys.executable, "-m", "stacktrace_lab", "replay", str(edited)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "step 9" in result.stdout and "rax" in result.stdout
