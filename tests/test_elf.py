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
