"""Real programs: the tutorial's program built with gcc and rustc, recorded as a Linux process.

The examples are compiled at test time (examples/README.md has the commands);
where gcc or rustc is missing the tests that need it skip, saying so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stacktrace_lab.analysis.check import check
from stacktrace_lab.analysis.events import derive_facts
from stacktrace_lab.cli import main
from stacktrace_lab.examples import build_example, compiler_missing
from stacktrace_lab.record.elf_front import record_elf
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
    assert "main" in {s.name for s in meta.stacks}
    assert any(call.name == "write" and call.result == len(LINE) for call in meta.syscalls)


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
    assert any(f"calloc_48 (48 bytes) overflows by {depth} bytes" in m for m in messages), messages


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


def test_a_dynamically_linked_program_is_refused(tmp_path: Path, capsys) -> None:
    if compiler_missing("c-static") is not None:
        pytest.skip(f"cannot build a C program: {compiler_missing('c-static')}")
    import subprocess

    from stacktrace_lab.examples import C_SOURCE

    program = tmp_path / "dynamic"
    subprocess.run(["gcc", "-o", str(program), str(C_SOURCE)], check=True)
    err = _refused([str(program)], capsys, tmp_path / "t.parquet")
    assert "dynamically linked" in err and "-static" in err


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
    # argv's strings sit at the top of the process stack, as Linux puts them.
    top = bytes(trace.slice(0, 1, ["stack__main"]).column(0)[0].as_py())
    assert b"/stacktrace-lab/first_switch-c-static\0one\0two\0" in top
