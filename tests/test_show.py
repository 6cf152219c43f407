"""`stacktrace-lab show`: one step as a debugger shows it, and the explore layer under it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stacktrace_lab.cli import main
from stacktrace_lab.explore import first_step_at, row_at, telescope
from stacktrace_lab.explore.rows import instruction_listing, mnemonic
from stacktrace_lab.record.recorder import Recording, RecordOptions, record
from stacktrace_lab.scenario import load_scenario
from stacktrace_lab.trace import load_trace

RET_STEP = 12  # first-switch: gt_switch's `retq`


def _show_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["show", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_first_switch_ret_step_shows_hello_planted_at_index_32(
    first_switch_trace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", str(first_switch_trace), "--step", str(RET_STEP)]) == 0
    out = capsys.readouterr().out
    hello = load_trace(first_switch_trace).metadata.symbols["hello"]
    assert "retq" in out
    assert "stack green" in out
    slot_line = next(line for line in out.splitlines() if "rsp->" in line)
    fields = slot_line.split()
    assert fields[1] == "32"  # byte index from green's base
    assert int(fields[3], 16) == hello
    assert fields[4] == "hello+0"
    assert "step 6 movq %rcx, 0x20(%rax)" in slot_line  # the store that planted it


def test_json_view_of_the_ret(first_switch_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    view = _show_json(capsys, str(first_switch_trace), "--step", str(RET_STEP))
    meta = load_trace(first_switch_trace).metadata
    green = meta.region("green")
    assert view["insn"] == "retq"
    stack = view["stack"]
    assert stack["region"] == "green" and stack["whole"] is True
    assert [s["index"] for s in stack["slots"]] == [0, 8, 16, 24, 32, 40]
    slot = next(s for s in stack["slots"] if s["index"] == 32)
    assert slot == {
        "index": 32,
        "addr": green.base + 32,
        "value": meta.symbols["hello"],
        "points_to": "hello+0",
        "written_at": 6,
        "writer": "movq %rcx, 0x20(%rax)",
    }
    assert stack["rsp"] == green.base + 32
    # The previous step (`movq (%rdi), %rsp`) moved rsp; the ret moves rip to hello and pops.
    assert view["registers"]["rsp"]["changed"] is True
    assert view["registers"]["rax"]["changed"] is False
    assert view["registers"]["rip"]["after"] == meta.symbols["hello"]
    assert view["registers"]["rsp"]["after"] == green.base + 40
    assert view["reads"] == [
        {"addr": green.base + 32, "size": 8, "value": meta.symbols["hello"], "where": "green[32]"}
    ]
    current = [line for line in view["listing"] if line["current"]]
    assert [line["insn"] for line in current] == ["retq"]


def test_step_selectors(first_switch_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = str(first_switch_trace)
    assert _show_json(capsys, trace, "--first-planted-ret")["step"] == RET_STEP
    assert _show_json(capsys, trace, "--at", "gt_switch+3")["step"] == RET_STEP
    assert _show_json(capsys, trace, "--at", "hello")["step"] == RET_STEP + 1
    assert _show_json(capsys, trace, "--step", "-1")["step"] == 18
    assert _show_json(capsys, trace)["step"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--step", "19"], "no step 19"),
        (["--step", "-20"], "no step -20"),
        (["--at", "nowhere"], "no symbol 'nowhere'"),
        (["--step", "1", "--at", "hello"], "give only one of"),
        (["--region", "heap"], "no stack or data region 'heap'"),
    ],
)
def test_bad_selections_exit_2(
    first_switch_trace: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["show", str(first_switch_trace), *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_missing_and_non_trace_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", str(tmp_path / "nope.parquet")]) == 2
    assert "nope.parquet" in capsys.readouterr().err
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    assert main(["show", str(junk)]) == 2
    assert "not a stacktrace-lab trace" in capsys.readouterr().err


def test_large_region_shows_slots_around_rsp(first_switch_trace: Path) -> None:
    trace = load_trace(first_switch_trace)
    main_stack = trace.metadata.region("main")
    view = telescope(trace, 3)  # rsp is in main's 64 KiB
    assert view is not None and view.region == main_stack and not view.whole
    assert 4 <= len(view.slots) <= 20
    assert any(s.holds(view.rsp) for s in view.slots)
    top = view.slots[-1]
    assert top.index == main_stack.size - 8
    assert top.points_to == "sentinel return" and top.written_at is None
    pushed_rbp = next(s for s in view.slots if s.index == main_stack.size - 16)
    assert pushed_rbp.written_at == 0 and pushed_rbp.writer is not None
    assert pushed_rbp.writer.text == "pushq %rbp"


def test_the_same_answers_across_row_groups(tmp_path: Path) -> None:
    """Tiny row groups: every scan crosses group boundaries and must agree with one group."""
    scenario = load_scenario("first-switch")
    one = load_trace(record(scenario, tmp_path / "one.parquet").path)
    many = load_trace(
        record(scenario, tmp_path / "many.parquet", RecordOptions(row_group_size=3)).path
    )
    assert many.num_row_groups > 5
    for step in (0, 7, RET_STEP, 18):
        assert telescope(one, step) == telescope(many, step)
        assert row_at(one, step) == row_at(many, step)
    assert first_step_at(many, "hello") == RET_STEP + 1
    assert instruction_listing(one) == instruction_listing(many)


DEEP = """
main:
    mov $40, %ecx
down:
    push %rcx               # 40 pushes: 320 bytes below the top
    dec %ecx
    jnz down
    movabs $0x1122334455667788, %rax
    mov %rax, 8(%rsp)
    hlt
"""


def test_slots_below_the_snapshot_window_are_rebuilt_from_writes(
    record_source: Callable[..., Recording],
) -> None:
    """With a 64-byte snapshot the deep slots exist only in the write log; the values agree."""
    small = load_trace(record_source(DEEP, RecordOptions(snapshot_limit=64)).path)
    full = load_trace(record_source(DEEP, RecordOptions(snapshot_limit=4096)).path)
    last = small.num_rows - 1
    assert mnemonic(row_at(small, last).insn) == "hlt"
    deep, whole = telescope(small, last), telescope(full, last)
    assert deep is not None and whole is not None
    assert deep.slots == whole.slots
    stored = next(s for s in deep.slots if s.addr == deep.rsp + 8)
    assert stored.value == 0x1122334455667788
    assert stored.written_at == last - 1
    assert stored.addr < small.metadata.snapshots["main"].base  # outside the snapshot window


def test_show_runs_as_a_program(first_switch_trace: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stacktrace_lab",
            "show",
            str(first_switch_trace),
            "--first-planted-ret",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "hello+0" in result.stdout and "step 6" in result.stdout


def test_rsp_outside_every_stack_and_an_explicit_region(
    record_source: Callable[..., Recording], capsys: pytest.CaptureFixture[str]
) -> None:
    path = record_source(
        "main:\n    movabs $0x1234, %rsp\n    nop\n    hlt\n", stacks=(("main", 4096), ("aux", 32))
    ).path
    assert main(["show", str(path), "--step", "1"]) == 0
    assert "is in no stack region" in capsys.readouterr().out
    view = _show_json(capsys, str(path), "--step", "1", "--region", "aux")
    assert view["stack"]["region"] == "aux"
    assert [s["index"] for s in view["stack"]["slots"]] == [0, 8, 16, 24]


def test_the_query_layer_does_not_import_the_emulator() -> None:
    code = (
        "import sys, stacktrace_lab.explore, stacktrace_lab.stepper, stacktrace_lab.explore.view;"
        "bad = sorted(m for m in ('unicorn', 'keystone') if m in sys.modules);"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
