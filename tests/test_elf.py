"""Real programs: the tutorial's program built with gcc and rustc, recorded as a Linux process.

The examples are compiled at test time (examples/README.md has the commands);
where gcc or rustc is missing the tests that need it skip, saying so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from stacktrace_lab.analysis.check import check
from stacktrace_lab.analysis.events import derive_facts
from stacktrace_lab.cli import main
from stacktrace_lab.examples import build_example, compiler_missing
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.record.recorder import Recording
from stacktrace_lab.replay import replay
from stacktrace_lab.trace import load_trace

LINE = "I LOVE WAKING UP ON A NEW STACK!\n"
BUILDS = ["c-static", "rust-static-pie", "rust-static"]


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("examples")
    built = {}
    for build in BUILDS:
        if compiler_missing(build) is None:
            built[build] = build_example(build, out)
    return built


@pytest.fixture(scope="session")
def recordings(
    programs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Recording]:
    out = tmp_path_factory.mktemp("elf-traces")
    return {build: record_elf(p, out / f"{build}.parquet") for build, p in programs.items()}


def _recording(recordings: dict[str, Recording], build: str) -> Recording:
    why = compiler_missing(build)
    if why is not None:
        pytest.skip(f"cannot build the {build} example: {why}")
    return recordings[build]


@pytest.mark.parametrize("build", BUILDS)
def test_the_tutorials_program_switches_to_its_48_byte_stack(
    recordings: dict[str, Recording], build: str
) -> None:
    rec = _recording(recordings, build)
    trace = load_trace(rec.path)
    meta = trace.metadata
    assert meta.stop.reason == "spin"
    assert meta.stdout == LINE
    assert meta.program is not None and meta.program.kind == "elf"
    # The allocation that became the stack was found, not declared.
    facts = derive_facts(trace)
    (planted,) = facts.planted_returns
    stack = meta.region(str(planted.region))
    assert (stack.kind, stack.size) == ("stack", 48)
    assert stack.name == "calloc_48"  # the allocator and the size the program asked for
    assert planted.index == 32  # SSIZE - 16
    assert planted.target.split("+")[0].endswith("hello")
    # hello is entered as if called: rsp % 16 == 8.
    entry_rsp = int(trace.slice(planted.ret_step + 1, planted.ret_step + 2, ["rsp"])["rsp"][0])
    assert entry_rsp == stack.base + 40 and entry_rsp % 16 == 8
    assert "stack" in {s.name for s in meta.stacks}
    assert any(call.name == "write" and call.result == len(LINE) for call in trace.syscalls())


@pytest.mark.parametrize("build", BUILDS)
def test_printing_overflows_the_48_byte_stack(recordings: dict[str, Recording], build: str) -> None:
    rec = _recording(recordings, build)
    trace = load_trace(rec.path)
    stack = trace.metadata.region("calloc_48")
    rsp = trace.table(["rsp"])["rsp"].to_numpy().astype(np.int64)
    below = rsp[(rsp < stack.base) & (rsp > stack.base - 4096)]
    depth = int(stack.base - below.min())
    assert depth > 64  # puts / println! need hundreds of bytes
    result = check(trace).result("stack-bounds")
    assert not result.holds
    messages = [v.message for v in result.violations]
    # the label says whose allocation: `calloc(48) in main` (C), `... in first_switch::main`
    assert any(
        m.startswith("calloc_48 (calloc(48) in ") and f", 48 bytes) overflows by {depth} bytes" in m
        for m in messages
    ), messages


def test_re_recording_is_byte_identical_and_replay_confirms(
    programs: dict[str, Path], recordings: dict[str, Recording], tmp_path: Path
) -> None:
    rec = _recording(recordings, "rust-static-pie")
    again = record_elf(programs["rust-static-pie"], tmp_path / "again.parquet")
    assert again.path.read_bytes() == rec.path.read_bytes()
    result = replay(load_trace(rec.path))
    assert result.matches and result.steps_compared == rec.metadata.steps


def test_replay_refuses_another_binary(
    programs: dict[str, Path], recordings: dict[str, Recording], capsys
) -> None:
    rec = _recording(recordings, "rust-static-pie")
    other = programs.get("rust-static")
    if other is None:
        pytest.skip("needs the second Rust build")
    assert main(["replay", str(rec.path), "--program", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not the program recorded" in err and len(err.splitlines()) == 1


def test_from_main_skips_the_start_up(
    programs: dict[str, Path], recordings: dict[str, Recording], tmp_path: Path
) -> None:
    full = _recording(recordings, "rust-static-pie")
    rec = record_elf(programs["rust-static-pie"], tmp_path / "from.parquet", from_symbol="main")
    meta = rec.metadata
    assert meta.start is not None and meta.start.symbol == "main"
    # The steps skipped and the steps recorded add up to the whole run.
    assert meta.start.step + meta.steps == full.metadata.steps
    assert meta.stop.reason == "spin" and meta.stdout == LINE
    trace = load_trace(rec.path)
    assert int(trace.slice(0, 1, ["rip"])["rip"][0]) == meta.symbols["main"]
    assert replay(trace).matches


def test_source_lines_from_dwarf(recordings: dict[str, Recording]) -> None:
    rec = _recording(recordings, "c-static")
    trace = load_trace(rec.path)
    sources = set(trace.table(["source"])["source"].drop_null().to_pylist())
    assert any(s.startswith("first_switch.c:") or "/first_switch.c:" in s for s in sources)


# --- bad input: one line naming the file, exit 2, no trace written ---------------------


def _elf_header(elf_class: int, machine: int, e_type: int = 2) -> bytes:
    """A bare ELF header (no segments): enough for the checks that come first."""
    ident = b"\x7fELF" + bytes([elf_class, 1, 1, 0]) + bytes(8)
    if elf_class == 1:
        return ident + e_type.to_bytes(2, "little") + machine.to_bytes(2, "little") + bytes(36)
    return ident + e_type.to_bytes(2, "little") + machine.to_bytes(2, "little") + bytes(48)


def _refused(args: list[str], capsys, output: Path) -> str:
    assert main(["record", *args, "-o", str(output)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not output.exists()
    return err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"#!/bin/sh\necho hi\n", "not an ELF executable"),
        (_elf_header(1, 3), "32-bit ELF (32-bit x86)"),
        (_elf_header(2, 183), "an ELF for ARM64"),
        (_elf_header(1, 40), "32-bit ELF (ARM)"),
        (_elf_header(2, 62, e_type=1), "not an executable (ET_REL)"),
    ],
)
def test_a_file_that_is_not_a_static_x86_64_program_is_refused(
    tmp_path: Path, capsys, content: bytes, expected: str
) -> None:
    program = tmp_path / "prog"
    program.write_bytes(content)
    err = _refused([str(program)], capsys, tmp_path / "t.parquet")
    assert str(program) in err and expected in err


def test_a_missing_from_symbol_is_refused(
    programs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    if "c-static" not in programs:
        pytest.skip(f"cannot build the C example: {compiler_missing('c-static')}")
    err = _refused(
        [str(programs["c-static"]), "--from", "no_such_function"], capsys, tmp_path / "t.parquet"
    )
    assert "--from no_such_function: no such symbol" in err


def test_cli_records_a_program_with_arguments(programs: dict[str, Path], tmp_path: Path) -> None:
    if "c-static" not in programs:
        pytest.skip(f"cannot build the C example: {compiler_missing('c-static')}")
    out = tmp_path / "t.parquet"
    assert main(["record", str(programs["c-static"]), "-o", str(out), "--", "one", "two"]) == 0
    trace = load_trace(out)
    meta = trace.metadata
    assert meta.options["args"] == ["one", "two"]
    assert meta.stop.reason == "spin"
    # The process stack's snapshot is where its frames were (record/core/windows.py),
    # not its top (argv and the environment, which never change): the deepest
    # rsp in it, with the red zone under it.
    window = meta.snapshots["stack"]
    stack = meta.region("stack")
    rsp = trace.column("rsp")
    deepest = int(rsp[(rsp >= stack.base) & (rsp <= stack.top)].min())
    assert window.base <= deepest - 128 and deepest < window.top < stack.top


# --- the parts, alone ---------------------------------------------------------------


STATIC_ARRAY_C = r"""
#include <stdint.h>
#include <unistd.h>

static uint8_t green_stack[256];

static void hello(void)
{
    write(1, "hi\n", 3);
    for (;;) {
    }
}

__attribute__((noinline)) static void switch_to(uint64_t rsp)
{
    __asm__ volatile("mov %0, %%rsp\n\tret" : : "r"(rsp) : "memory");
}

int main(void)
{
    uint64_t entry = (uint64_t)(uintptr_t)hello;
    __builtin_memcpy(green_stack + 256 - 16, &entry, 8);
    switch_to((uint64_t)(uintptr_t)(green_stack + 256 - 16));
    return 0;
}
"""


def _build_static_c(directory: Path, name: str, source: str) -> Path:
    """`source` built with gcc -static -O1 as `directory/name` (skips without gcc)."""
    if compiler_missing("c-static") is not None:
        pytest.skip(f"cannot build a C program: {compiler_missing('c-static')}")
    import subprocess

    (directory / f"{name}.c").write_text(source)
    program = directory / name
    subprocess.run(
        ["gcc", "-static", "-O1", "-o", str(program), str(directory / f"{name}.c")], check=True
    )
    return program


def test_a_stack_in_a_static_array_is_named_after_its_symbol(tmp_path: Path) -> None:
    program = _build_static_c(tmp_path, "array", STATIC_ARRAY_C)
    rec = record_elf(program, tmp_path / "array.parquet", to_symbol="_exit")
    meta = rec.metadata
    assert meta.stdout == "hi\n" and meta.stop.reason == "spin"
    stack = meta.region("green_stack")
    assert (stack.kind, stack.size) == ("stack", 256)
    (planted,) = derive_facts(load_trace(rec.path)).planted_returns
    assert (planted.region, planted.index) == ("green_stack", 240)


def test_name_stacks_prefers_symbol_then_allocation_then_mapping() -> None:
    from stacktrace_lab.record.linux.discovery import Allocation, Evidence, name_stacks
    from stacktrace_lab.record.linux.elf import DataSymbol

    evidence = Evidence(
        outside=[
            (10, 0x1020),  # in the data symbol
            (20, 0x5010),  # in a live calloc block
            (21, 0x4F00),  # just under it: an overflow, not a new stack
            (30, 0x9000),  # in an mmap
            (40, 0x20000),  # in a freed block: only the range rsp visited
            (41, 0x20010),
        ],
        allocations=[
            Allocation(5, "calloc", 0x5000, 48),
            Allocation(6, "malloc", 0x20000, 64, freed=7),
        ],
        mmaps=[(0x8000, 0x2000)],
    )
    stacks = name_stacks(evidence, (DataSymbol("demo::STACK", 0x1000, 64),))
    assert [(s.name, s.base, s.size) for s in stacks] == [
        ("demo.STACK", 0x1000, 64),
        ("calloc_48", 0x5000, 48),
        ("mmap_8192", 0x8000, 0x2000),
        ("stack_20000", 0x20000, 0x20),
    ]


def test_the_process_starts_as_linux_leaves_it(programs: dict[str, Path]) -> None:
    if "c-static" not in programs:
        pytest.skip(f"cannot build the C example: {compiler_missing('c-static')}")
    from stacktrace_lab.record.linux.elf import load_elf
    from stacktrace_lab.record.linux.process import AT_ENTRY, AT_PAGESZ, AT_RANDOM, linux_process
    from stacktrace_lab.record.machine.machine import Machine
    from stacktrace_lab.record.machine.syscalls import fixed_random

    image = load_elf(programs["c-static"])
    machine = Machine(linux_process(image, ["x"], []).spec)
    regs = machine.registers()
    rsp = regs["rsp"]
    assert rsp % 16 == 0 and regs["rflags"] == 0x202 and regs["rip"] == image.entry

    def word(addr: int) -> int:
        return int.from_bytes(machine.read(addr, 8), "little")

    assert word(rsp) == 2  # argc: the program's path and "x"
    assert machine.read(word(rsp + 16), 2) == b"x\0"
    assert word(rsp + 24) == 0 and word(rsp + 32) == 0  # argv's end, an empty envp
    auxv = {}
    at = rsp + 40
    while word(at) != 0:
        auxv[word(at)] = word(at + 8)
        at += 16
    assert auxv[AT_PAGESZ] == 4096 and auxv[AT_ENTRY] == image.entry
    assert machine.read(auxv[AT_RANDOM], 16) == fixed_random(16)


def test_to_stops_at_a_symbol(programs: dict[str, Path], tmp_path: Path) -> None:
    if "c-static" not in programs:
        pytest.skip(f"cannot build the C example: {compiler_missing('c-static')}")
    rec = record_elf(
        programs["c-static"], tmp_path / "t.parquet", from_symbol="main", to_symbol="puts"
    )
    meta = rec.metadata
    assert (meta.stop.reason, meta.stop.detail) == ("halted", "reached puts (--to)")
    assert meta.final["rip"] == meta.symbols["puts"] or meta.final["rip"] == meta.symbols.get(
        "_IO_puts"
    )
    assert meta.stdout == ""


def test_a_scenario_file_can_name_a_program(programs: dict[str, Path], tmp_path: Path) -> None:
    if "rust-static-pie" not in programs:
        pytest.skip(f"cannot build the Rust example: {compiler_missing('rust-static-pie')}")
    import shutil

    shutil.copy(programs["rust-static-pie"], tmp_path / "first_switch")
    toml = tmp_path / "rust.toml"
    toml.write_text(
        """name = "first-switch-rust"
description = "The tutorial's program, compiled."
[[stacks]]
name = "green"
size = 48
[expect]
stdout = "I LOVE WAKING UP ON A NEW STACK!\\n"
stop = "spin"
[[expect.ret]]
stack = "green"
index = 32
target = "first_switch::hello"
[program]
elf = "first_switch"
from = "main"
"""
    )
    out = tmp_path / "t.parquet"
    assert main(["record", str(toml), "-o", str(out)]) == 0
    trace = load_trace(out)
    assert trace.metadata.region("green").size == 48
    result = check(trace)
    assert result.result("expect").holds, result.result("expect").violations
    assert result.failed == ("stack-bounds",)
    assert replay(trace).matches


def test_show_and_who_wrote_print_source_lines(recordings: dict[str, Recording], capsys) -> None:
    rec = _recording(recordings, "c-static")
    assert main(["show", str(rec.path), "--first-planted-ret"]) == 0
    out = capsys.readouterr().out
    assert "first_switch.c:" in out  # gt_switch's lines beside its instructions
    assert main(["who-wrote", str(rec.path), "calloc_48:32", "--first-planted-ret"]) == 0
    out = capsys.readouterr().out
    assert "first_switch.c:" in out  # the memcpy in main that planted hello


def test_a_stripped_programs_stack_is_named_after_its_heap_chunk(
    programs: dict[str, Path], tmp_path: Path
) -> None:
    if "c-static" not in programs or shutil.which("strip") is None:
        pytest.skip("needs the C example and strip")
    import subprocess

    stripped = tmp_path / "stripped"
    subprocess.run(["strip", "-s", "-o", str(stripped), str(programs["c-static"])], check=True)
    rec = record_elf(stripped, tmp_path / "t.parquet")
    assert rec.metadata.stdout == LINE and rec.metadata.stop.reason == "spin"
    (planted,) = derive_facts(load_trace(rec.path)).planted_returns
    # calloc(48, 1) is a 64-byte chunk: 56 bytes the program may use.
    assert (planted.region, planted.index) == ("chunk_56", 32)


def test_demo_rust_builds_records_and_reports(tmp_path: Path, monkeypatch, capsys) -> None:
    from stacktrace_lab.commands.demo import RUST_NAME
    from stacktrace_lab.examples import EXAMPLE_REPORTS

    # Plain `rustc -g`, as a new user builds it: dynamically linked (issue 21).
    RUST_BUILD = EXAMPLE_REPORTS[RUST_NAME].build
    assert RUST_BUILD == "rust-dynamic"
    if compiler_missing(RUST_BUILD) is not None:
        pytest.skip(f"cannot build the Rust example: {compiler_missing(RUST_BUILD)}")
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--rust"]) == 1  # stack-bounds fails: println! overflows the stack
    out = capsys.readouterr().out
    assert "reports/first-switch-rust/index.html" in out
    # The trace depends on this machine's libraries, and the demo says so.
    assert "pins this machine's libraries by sha256 (" in out and "libc.so.6" in out
    report = (tmp_path / "reports" / "first-switch-rust" / "report.md").read_text()
    assert "a dynamically linked x86-64 Linux program" in report
    assert "calloc_48 (calloc(48) in first_switch::main, 48 bytes) overflows by" in report
    assert "| calloc_48 | 32 |" in report and "`first_switch::hello` | entry" in report
    assert "first_switch.rs:" in report
    # replay works on the machine that recorded it.
    assert main(["replay", "stacktrace-lab-traces/first-switch-rust.parquet"]) == 0


def test_a_scenario_naming_a_program_outside_its_directory_needs_allow_outside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`[program] elf` is held to the scenario's directory like `[program] file`:
    a shared scenario must not record a host program into a trace unasked."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "prog").write_bytes(b"#!/bin/sh\n")  # not an ELF: read only when allowed
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    for name, elf in (("abs.toml", str(outside / "prog")), ("up.toml", "../elsewhere/prog")):
        toml = scenarios / name
        toml.write_text(f'name = "x"\n[program]\nelf = "{elf}"\n')
        assert main(["record", str(toml), "-o", str(tmp_path / "t.parquet")]) == 2
        err = capsys.readouterr().err
        assert err == (
            f"stacktrace-lab: error: {toml}: field 'program.elf': {elf!r} is outside the "
            f"scenario's directory {scenarios}; give --allow-outside to read it\n"
        )
        assert (
            main(["record", str(toml), "--allow-outside", "-o", str(tmp_path / "t.parquet")]) == 2
        )
        assert "not an ELF" in capsys.readouterr().err
        assert not (tmp_path / "t.parquet").exists()


PRIVILEGED_BEFORE_MAIN_C = """
#include <stdio.h>
__attribute__((constructor)) static void before_main(void) { __asm__ volatile("cli"); }
int main(void) { puts("never"); return 0; }
"""


def test_a_privileged_instruction_before_from_is_a_fault_not_silently_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CPU is in user mode during `--from`'s fast-forward too: a `cli` in a
    constructor stops the run with the #GP, as it would on a real CPU, instead of
    running at ring 0 unseen."""
    program = _build_static_c(tmp_path, "cli", PRIVILEGED_BEFORE_MAIN_C)
    out = tmp_path / "t.parquet"
    assert main(["record", str(program), "--from", "main", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"stacktrace-lab: error: {program}: the program never reached --from main"
    ), err
    assert "fault: general protection fault (#GP) at 0x" in err and ": cli is a privileged" in err
    assert err.count("\n") == 1 and not out.exists()
    # Recorded from the entry, the same instruction is the fault stop, its row kept.
    assert main(["record", str(program), "-o", str(out)]) == 0
    meta = load_trace(out).metadata
    assert meta.stop.reason == "fault" and "cli is a privileged instruction" in meta.stop.detail


def test_a_fifo_or_a_device_named_as_the_program_is_one_line_not_a_hang(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The program file is read whole: a FIFO would block and /dev/zero never end.
    Both are refused before reading, like every other input (limits.read_input)."""
    fifo = tmp_path / "prog"
    os.mkfifo(fifo)
    toml = tmp_path / "fifo.toml"
    toml.write_text('name = "x"\n[program]\nelf = "prog"\n')
    zero = tmp_path / "zero.toml"
    zero.write_text('name = "x"\n[program]\nelf = "/dev/zero"\n')
    cases = [
        (["record", str(toml)], f"{fifo}: is not a regular file; a program must be a regular file"),
        (
            ["record", str(zero), "--allow-outside"],
            "/dev/zero: is not a regular file; a program must be a regular file",
        ),
    ]
    for argv, message in cases:
        assert main([*argv, "-o", str(tmp_path / "t.parquet")]) == 2
        assert capsys.readouterr().err == f"stacktrace-lab: error: {message}\n"
    assert not (tmp_path / "t.parquet").exists()


def test_progress_names_each_phase_of_a_program_recording(
    programs: dict[str, Path], tmp_path: Path
) -> None:
    """`--from main`: the unrecorded start-up, the discovery pass and the recording
    each report their steps (the progress bar shows the phase with its rate)."""
    if "c-static" not in programs:
        pytest.skip(f"cannot build the C example: {compiler_missing('c-static')}")
    seen: list[tuple[int, str]] = []

    def progress(steps: int, phase: str = "recording") -> None:
        seen.append((steps, phase))

    rec = record_elf(
        programs["c-static"], tmp_path / "t.parquet", from_symbol="main", progress=progress
    )
    phases = list(dict.fromkeys(phase for _steps, phase in seen))
    assert phases[:2] == ["start-up", "discovery"] and phases[-1] == "recording", phases
    start_up = max(steps for steps, phase in seen if phase == "start-up")
    assert rec.metadata.start is not None and start_up == rec.metadata.start.step
    assert max(steps for steps, phase in seen if phase == "recording") == rec.metadata.steps


def test_names_are_demangled_by_their_language() -> None:
    """Rust names (legacy by rust-demangler without the hash, v0 by rust_v0), C++ names by
    cxxfilt (imported only for them), C names and garbage as they are."""
    from stacktrace_lab.record.linux.elf import demangle_all

    names = [
        "_ZN4core3ptr13drop_in_place17h0123456789abcdefE",
        "_RNvCs1234_7mycrate3foo",
        "malloc",
        "_ZN3foo3barEv",
        "_Zgarbage",
    ]
    assert demangle_all(names) == [
        "core::ptr::drop_in_place",
        "mycrate::foo",
        "malloc",
        "foo::bar()",
        "_Zgarbage",
    ]
