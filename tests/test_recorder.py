"""The recorder's derived columns against unicorn read directly, and its file guarantees."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from unicorn import UC_HOOK_CODE, Uc

from stacktrace_lab.record.machine.machine import Machine
from stacktrace_lab.record.recorder import (
    RecordOptions,
    build_program,
    machine_spec,
    record,
    snapshot_windows,
)
from stacktrace_lab.scenario import builtin_names, load_scenario
from stacktrace_lab.trace import load_trace

# Calls, pushes, an SSE store and stores into a second stack: plenty of stack writes,
# some straddling the top-512-byte window of the big stack.
BUSY = """
main:
    mov $40, %rcx
    movabs $side_base, %rbx
loop:
    push %rcx
    call work
    pop %rcx
    movq %rcx, (%rbx)
    movq %rcx, 8(%rbx)
    add $16, %rbx
    movabs $side_top, %rdx
    cmp %rdx, %rbx
    jb .Lkeep
    movabs $side_base, %rbx
.Lkeep:
    dec %rcx
    jnz loop
    ret
work:
    push %rbp
    mov %rsp, %rbp
    sub $32, %rsp
    movq %rcx, %xmm0
    movdqu %xmm0, -16(%rbp)
    movq %rcx, -24(%rbp)
    leave
    ret
"""
BUSY_STACKS = (("main", 8192), ("side", 48))


def _direct_snapshots(path: Path) -> dict[str, list[bytes]]:
    """The stack windows read from unicorn's memory at every step (the slow, obvious way)."""
    scenario = load_scenario(path)
    program, regions = build_program(scenario)
    machine = Machine(machine_spec(program, regions, scenario.entry))
    windows = snapshot_windows(regions, 512)
    seen: dict[str, list[bytes]] = {name: [] for name in windows}

    def on_code(uc: Uc, _address: int, _size: int, _user: object) -> None:
        for name, window in windows.items():
            seen[name].append(bytes(uc.mem_read(window.base, window.size)))

    machine.uc.hook_add(UC_HOOK_CODE, on_code)
    machine.run(scenario.max_steps, 1 << 30, lambda chunk: None)
    return seen


@pytest.mark.parametrize("row_group_size", [7, 65536])
def test_derived_snapshots_equal_memory_read_directly(write_scenario, row_group_size: int) -> None:
    path = write_scenario(BUSY, stacks=BUSY_STACKS)
    out = path.with_suffix(".parquet")
    record(load_scenario(path), out, RecordOptions(row_group_size=row_group_size))
    table = pq.read_table(out)
    direct = _direct_snapshots(path)
    assert len(direct["main"]) == table.num_rows > 500
    for name, expected in direct.items():
        assert table.column(f"stack__{name}").to_pylist() == expected, name


def test_row_group_size_does_not_change_the_rows(write_scenario) -> None:
    path = write_scenario(BUSY, stacks=BUSY_STACKS)
    small = record(
        load_scenario(path), path.with_name("small.parquet"), RecordOptions(row_group_size=5)
    )
    big = record(load_scenario(path), path.with_name("big.parquet"))
    a, b = pq.read_table(small.path), pq.read_table(big.path)
    assert pq.ParquetFile(small.path).num_row_groups > 100
    assert a.to_pylist() == b.to_pylist()


@pytest.mark.parametrize("name", builtin_names())
def test_recording_twice_gives_identical_bytes(tmp_path: Path, name: str) -> None:
    # Twice in one process: state left behind by a first recording (Arrow's
    # writer, keystone, capstone) must not change the second file.
    scenario = load_scenario(name)
    one = record(scenario, tmp_path / "one.parquet").path
    two = record(scenario, tmp_path / "two.parquet").path
    assert one.read_bytes() == two.read_bytes()


def test_snapshot_limit_keeps_the_top_of_the_stack(tmp_path: Path) -> None:
    scenario = load_scenario("first-switch")
    trace = load_trace(
        record(scenario, tmp_path / "t.parquet", RecordOptions(snapshot_limit=64)).path
    )
    main = trace.metadata.region("main")
    window = trace.metadata.snapshots["main"]
    assert (window.base, window.size) == (main.top - 64, 64)
    assert trace.metadata.snapshots["green"].size == 48  # smaller than the limit: whole
    assert trace.table(["stack__main"]).schema.field(0).type.byte_width == 64


def test_a_failed_record_leaves_no_file(tmp_path: Path, write_scenario) -> None:
    path = write_scenario("main:\n nop\n ret")
    out = tmp_path / "out" / "t.parquet"
    out.parent.mkdir()

    def explode(_steps: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        record(load_scenario(path), out, RecordOptions(row_group_size=1), progress=explode)
    assert os.listdir(out.parent) == []


def test_a_failed_record_keeps_the_previous_trace(tmp_path: Path, write_scenario) -> None:
    path = write_scenario("main:\n nop\n ret")
    out = tmp_path / "t.parquet"
    record(load_scenario(path), out)
    before = out.read_bytes()

    def explode(_steps: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        record(load_scenario(path), out, RecordOptions(row_group_size=1), progress=explode)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".toml") == ["t.parquet"]


@pytest.mark.parametrize("dist", ["unicorn", "capstone", "keystone-engine", "no-such-dist-here"])
def test_installed_version_is_importlib_metadata(dist: str) -> None:
    """The trace's `tool` versions, read from the dist-info directly, are what
    importlib.metadata says (it is no longer imported by a recording)."""
    import importlib.metadata

    from stacktrace_lab.record.recorder import installed_version

    try:
        expected = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        expected = "unknown"
    assert installed_version(dist) == expected


@pytest.mark.parametrize(
    "spans",
    [
        [(0x1000, 0x1000), (0x5000, 0x2000), (0x3000, 0x1000)],  # disjoint, not in order
        [(0x1000, 0x3000), (0x2000, 0x3000)],  # overlapping: the first one holding it
        [(0x2000, 0), (0x2000, 0x1000)],  # an empty region at the same base
    ],
)
def test_line_use_finds_the_code_region_as_a_scan_does(spans: list[tuple[int, int]]) -> None:
    """The `source` column's rule asks which code region holds each address (found by
    bisection when the regions are disjoint): the same answer as the first region in
    order that holds it."""
    from stacktrace_lab.layout import Region
    from stacktrace_lab.record.recorder import LineUse
    from stacktrace_lab.trace.format import SourceLine

    code = tuple(
        Region(f"code{i}", "code", base, size, "r-x") for i, (base, size) in enumerate(spans)
    )
    lines = tuple(SourceLine(addr, "a.c", addr // 0x100) for addr in range(0x800, 0x8000, 0x100))
    use = LineUse(lines, code)
    for addr in range(0x800, 0x8000, 0x80):
        region = next((r for r in code if r.contains(addr)), None)
        row = max((line for line in lines if line.addr <= addr), key=lambda line: line.addr)
        expected = None if region is None or row.addr < region.base else (row.file, row.line)
        assert use(addr) == expected
