"""Verdicts on compiled programs: a part of a recording (`--from`, `--to`) judges as the
whole one does, frames are kept through an overflow, advice names the instructions,
slots have one spelling, and what `record` writes every command opens.

The programs are built at test time; where gcc or rustc is missing the tests skip.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stacktrace_lab.analysis.check import check
from stacktrace_lab.analysis.events import derive_facts
from stacktrace_lab.analysis.kinds import Origin
from stacktrace_lab.cli import main
from stacktrace_lab.examples import build_example, compiler_missing
from stacktrace_lab.explore.backtrace import backtraces, frame_history
from stacktrace_lab.export.perfetto import chrome_trace_events
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.trace import load_trace

HELLO_C = '#include <stdio.h>\nint main(){puts("hello");return 0;}\n'
EXAMPLES = ["c-static", "rust-static-pie"]


def _gcc(directory: Path, name: str, source: str, *flags: str) -> Path:
    why = compiler_missing("c-static")
    if why is not None:
        pytest.skip(f"cannot build a C program: {why}")
    (directory / f"{name}.c").write_text(source)
    program = directory / name
    subprocess.run(
        ["gcc", "-static", "-g", *flags, "-o", str(program), str(directory / f"{name}.c")],
        check=True,
    )
    return program


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("real-verdicts")
    built = {"hello": _gcc(out, "hello", HELLO_C)}
    for build in EXAMPLES:
        if compiler_missing(build) is None:
            built[build] = build_example(build, out)
    return built


def _program(programs: dict[str, Path], name: str) -> Path:
    if name not in programs:
        pytest.skip(f"cannot build {name}: {compiler_missing(name)}")
    return programs[name]


def _verdicts(path: Path) -> dict[str, tuple[bool, tuple[str, ...]]]:
    """Per invariant: whether it holds and the kinds of its causes."""
    result = check(load_trace(path))
    return {r.id: (r.holds, tuple(sorted(c.kind for c in r.causes))) for r in result.results}


# --- 1. a part of a recording judges as the whole one ------------------------------


@pytest.mark.parametrize("name", ["hello", *EXAMPLES])
def test_from_main_gives_the_verdicts_of_the_whole_recording(
    programs: dict[str, Path], name: str, tmp_path: Path
) -> None:
    program = _program(programs, name)
    whole = record_elf(program, tmp_path / "whole.parquet")
    part = record_elf(program, tmp_path / "part.parquet", from_symbol="main")
    assert _verdicts(part.path) == _verdicts(whole.path)


def test_main_returns_through_the_address_libc_pushed_before_the_trace(
    programs: dict[str, Path], tmp_path: Path
) -> None:
    rec = record_elf(_program(programs, "hello"), tmp_path / "t.parquet", from_symbol="main")
    result = check(load_trace(rec.path))
    assert result.holds, [v.message for r in result.results for v in r.violations]
    facts = derive_facts(load_trace(rec.path))
    # main's own ret pops what __libc_start_call_main's call pushed before row 0.
    before = facts.returns.origin == Origin.BEFORE
    assert int(before.sum()) == 1
    (i,) = before.nonzero()[0].tolist()
    assert int(facts.returns.slot[i]) == int(facts.rsp[0])
    notes = result.result("callee-saved").notes
    assert any("1 ret to a frame entered before the trace began" in n for n in notes)


@pytest.mark.parametrize("symbols", [{"to_symbol": "puts"}, {"from_symbol": "puts"}])
def test_a_cut_at_either_end_still_holds(
    programs: dict[str, Path], symbols: dict[str, str], tmp_path: Path
) -> None:
    rec = record_elf(_program(programs, "hello"), tmp_path / "t.parquet", **symbols)
    assert check(load_trace(rec.path)).holds


def test_a_return_planted_before_the_trace_began_is_a_switch_not_a_failure(
    programs: dict[str, Path], tmp_path: Path
) -> None:
    """`--from gt_switch`: main planted hello on the new stack before row 0."""
    program = _program(programs, "c-static")
    rec = record_elf(program, tmp_path / "t.parquet", from_symbol="gt_switch")
    result = check(load_trace(rec.path))
    assert result.result("ret-source").holds
    notes = result.result("ret-source").notes
    assert any("planted before the trace began" in n for n in notes), notes
    # The overflow of the 48-byte stack is still found, as in the whole recording.
    assert not result.result("stack-bounds").holds
    # calloc ran before the trace: the stack is still named (and labelled) by it.
    (green,) = [s for s in rec.metadata.stacks if s.name != "stack"]
    assert (green.name, green.label, green.size) == ("calloc_48", "calloc(48) in main", 48)


#: The 48-byte calloc block as `--from gt_switch` finds it: calloc ran before the trace,
#: and the start-up is watched for allocations (before, the stack was the 56-byte heap
#: chunk `chunk_56`).
GREEN_FROM_SWITCH = 48


def test_a_return_planted_before_the_trace_is_listed_and_an_expectation_names_it(
    programs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--from gt_switch`: the ret to hello is among the planted returns (its store is
    not in the trace), so `[[expect.ret]]` naming it holds, as on the whole recording."""
    program = _program(programs, "c-static")
    toml = program.parent / "from_switch.toml"
    toml.write_text(
        f"""name = "from-switch"
[[stacks]]
name = "green"
size = {GREEN_FROM_SWITCH}
[[expect.ret]]
stack = "green"
index = 32
target = "hello"
[program]
elf = "{program.name}"
from = "gt_switch"
"""
    )
    out = tmp_path / "t.parquet"
    assert main(["record", str(toml), "-o", str(out)]) == 0
    result = check(load_trace(out))
    assert result.result("expect").holds, result.result("expect").violations
    (planted,) = result.planted
    assert (planted.where, planted.target, planted.planted_step) == ("green[32]", "hello", None)
    assert planted.landing == "entry"
    capsys.readouterr()
    main(["check", str(out)])
    text = capsys.readouterr().out
    assert "planted before the trace began (the store is not in the trace)" in text
    # show and who-wrote find it as the first planted ret, and say where it came from.
    assert main(["show", str(out), "--first-planted-ret"]) == 0
    assert "step 5 of" in capsys.readouterr().out.splitlines()[0]
    assert main(["who-wrote", str(out), "green[32]", "--first-planted-ret"]) == 0
    said = capsys.readouterr().out
    assert "holds 0x" in said and "-> hello" in said
    assert "not written since the trace began (--from gt_switch)" in said
    # An expectation naming another slot still fails, and lists the one there is.
    toml.write_text(toml.read_text().replace("index = 32", "index = 24"))
    assert main(["record", str(toml), "-o", str(out), "--force"]) == 0
    (violation,) = check(load_trace(out)).result("expect").violations
    assert "index 32 -> hello" in violation.message


# --- 2. frames are never lost ------------------------------------------------------


@pytest.fixture(scope="module")
def rust_from_main(programs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    program = _program(programs, "rust-static-pie")
    out = tmp_path_factory.mktemp("rust-from-main") / "t.parquet"
    return record_elf(program, out, from_symbol="main").path


def test_every_call_of_the_rust_overflow_is_a_slice_in_the_perfetto_export(
    rust_from_main: Path,
) -> None:
    trace = load_trace(rust_from_main)
    facts = derive_facts(trace)
    overflowed = facts.calls[facts.rsp_stack[facts.calls] < 0]
    assert overflowed.size > 10  # println! on the 48-byte stack runs below its base
    doc = chrome_trace_events(trace, facts)
    sliced = sorted(e["args"]["entered"] for e in doc["traceEvents"] if e.get("cat") == "call")
    assert len(sliced) == facts.calls.size  # 225 of 225 with rustc 1.8x
    assert {f"step {c} by call" for c in overflowed.tolist()} <= set(sliced)


def test_backtraces_during_the_overflow_name_the_function_running(rust_from_main: Path) -> None:
    facts = derive_facts(load_trace(rust_from_main))
    history = frame_history(facts)
    overflowed = facts.calls[facts.rsp_stack[facts.calls] < 0]
    for k, call in zip(
        np.searchsorted(facts.calls, overflowed).tolist(), overflowed.tolist(), strict=True
    ):
        # The instruction after the call runs in the callee, on the overflowed stack.
        running, *_ = backtraces(facts, call + 1, history)
        assert running.running and running.stack == "calloc_48"
        assert running.frames[0].function == facts.symbolize(int(facts.call_targets[k]))
        assert running.frames[-1].function.endswith("hello")  # first code on the stack


# --- 6. advice at the mistake ------------------------------------------------------

CROSSED_C = r"""#include <stdio.h>
long crossed(long x);
long dropped(long x);
__asm__(
".text\n.globl crossed\ncrossed:\n"
"  push %rbx\n  push %rbp\n  mov %rdi, %rbx\n  mov %rdi, %rbp\n  lea 1(%rdi), %rax\n"
"  pop %rbx\n  pop %rbp\n  ret\n"
".globl dropped\ndropped:\n"
"  push %r12\n  mov %rdi, %r12\n  lea 2(%rdi), %rax\n  add $8, %rsp\n  ret\n");
int main(void) {
    register long keep __asm__("rbx") = 5;
    __asm__ volatile("" : "+r"(keep));
    long a = crossed(40);
    long b = dropped(1);
    __asm__ volatile("" : "+r"(keep));
    printf("%ld %ld %ld\n", a, b, keep);
    return 0;
}
"""
MISALIGNED_C = r"""#include <stdio.h>
long leaf(long x);
long caller(long x);
__asm__(
".text\n.globl leaf\nleaf:\n  lea 1(%rdi), %rax\n  ret\n"
".globl caller\ncaller:\n  sub $16, %rsp\n  call leaf\n  add $16, %rsp\n  ret\n");
int main(void) { printf("%ld\n", caller(1)); return 0; }
"""


def test_crossed_pops_are_restored_in_the_wrong_order_and_a_dropped_pop_is_named(
    tmp_path: Path,
) -> None:
    program = _gcc(tmp_path, "crossed", CROSSED_C, "-O1")
    rec = record_elf(program, tmp_path / "t.parquet", from_symbol="main")
    result = check(load_trace(rec.path))
    messages = [v.message for v in result.result("callee-saved").violations]
    assert len(messages) == 2, messages
    crossed, dropped = messages
    assert "rbx and rbp were saved by `pushq %rbx`" in crossed
    assert "and `pushq %rbp`" in crossed
    assert "restored by `popq %rbx`" in crossed and "`popq %rbp`" in crossed
    assert "restored in the wrong order" in crossed
    assert "must save" not in crossed  # both were saved: the rule is not the advice
    assert "r12 was saved by `pushq %r12`" in dropped
    assert "but never restored before the ret" in dropped


def test_a_misaligned_call_names_the_instruction_that_moved_rsp(tmp_path: Path) -> None:
    program = _gcc(tmp_path, "misalign", MISALIGNED_C, "-O1")
    rec = record_elf(program, tmp_path / "t.parquet", from_symbol="main")
    (violation,) = check(load_trace(rec.path)).result("alignment").violations
    assert "call to leaf with rsp % 16 == 8" in violation.message
    assert "the last instruction to move rsp before the call is `subq $0x10, %rsp`" in (
        violation.message
    )


# --- 7. names a person reads ---------------------------------------------------------


def test_the_process_stack_is_called_stack_and_slots_are_spelled_with_brackets(
    programs: dict[str, Path], tmp_path: Path
) -> None:
    program = _program(programs, "c-static")
    rec = record_elf(program, tmp_path / "t.parquet", from_symbol="main")
    names = {s.name for s in rec.metadata.stacks}
    assert names == {"stack", "calloc_48"}
    result = check(load_trace(rec.path))
    (planted,) = result.planted
    assert planted.where == "calloc_48[32]"
    (overflow,) = result.result("stack-bounds").violations
    assert "rsp moves to calloc_48[-8]" in overflow.message


@pytest.mark.parametrize(("build", "asker"), [("c-static", "main"), ("rust-static-pie", None)])
def test_a_heap_stack_is_labelled_with_its_allocation_and_who_asked(
    programs: dict[str, Path],
    build: str,
    asker: str | None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The name stays `calloc_48` (SQL, diff keys, goldens); the label says what it is,
    and check, show, the SQL `regions` table and the Perfetto tracks show it."""
    program = _program(programs, build)
    rec = record_elf(program, tmp_path / "t.parquet", from_symbol="main")
    green = rec.metadata.region("calloc_48")
    assert green.label.startswith("calloc(48) in ")
    who = green.label.removeprefix("calloc(48) in ")
    if asker is not None:
        assert who == asker
    else:  # past Rust's allocation wrappers, to the program's own code
        assert not who.startswith(("__rust_", "__rdl_", "alloc::")), who
        assert who.startswith("first_switch::"), who
    assert rec.metadata.region("stack").label == ""  # the name says it
    (overflow,) = check(load_trace(rec.path)).result("stack-bounds").violations
    assert f"calloc_48 ({green.label}, 48 bytes) overflows" in overflow.message
    capsys.readouterr()
    query = "select label from regions where name = 'calloc_48'"
    assert main(["query", str(rec.path), query, "--json"]) == 0
    assert green.label in capsys.readouterr().out
    tracks = [
        e["args"]["name"]
        for e in chrome_trace_events(load_trace(rec.path))["traceEvents"]
        if e.get("name") == "thread_name"
    ]
    assert f"stack calloc_48 ({green.label})" in tracks
    capsys.readouterr()
    assert main(["show", str(rec.path), "--first-planted-ret"]) == 0
    assert f"stack calloc_48 ({green.label}): " in capsys.readouterr().out


# --- 8. what record writes, every command opens -------------------------------------

GUARDED_STACK_C = r"""#include <stdio.h>
#include <sys/mman.h>
#include <ucontext.h>
static ucontext_t main_ctx, co_ctx;
static void co(void) { puts("on the coroutine"); swapcontext(&co_ctx, &main_ctx); }
int main(void) {
    size_t size = 64 * 1024, page = 4096;
    char *mem = mmap(0, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    mprotect(mem, page, PROT_NONE);  /* guard page under the stack */
    getcontext(&co_ctx);
    co_ctx.uc_stack.ss_sp = mem + page;
    co_ctx.uc_stack.ss_size = size;
    co_ctx.uc_link = &main_ctx;
    makecontext(&co_ctx, co, 0);
    swapcontext(&main_ctx, &co_ctx);
    puts("back");
    return 0;
}
"""


def test_a_stack_mapped_with_a_guard_page_is_nested_in_its_mapping_without_the_guard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = _gcc(tmp_path, "guard", GUARDED_STACK_C, "-O1")
    out = tmp_path / "t.parquet"
    assert main(["record", str(program), "--from", "main", "-o", str(out)]) == 0
    meta = load_trace(out).metadata
    (stack,) = [s for s in meta.stacks if s.name != "stack"]
    mapping = next(r for r in meta.regions if r.kind == "mapped" and r.base <= stack.base)
    # The mapping is 64 KiB and a guard page; the stack is the 64 KiB above the guard.
    assert (stack.name, stack.size) == ("mmap_65536", 65536)
    assert mapping.base + 4096 == stack.base and stack.top == mapping.top
    assert main(["check", str(out)]) == 0
    assert "all invariants hold" in capsys.readouterr().out


def test_record_refuses_to_write_a_trace_the_reader_would_refuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stacktrace_lab.record import recorder

    made = recorder._metadata

    def overlapping(*args: Any, **kwargs: Any) -> Any:
        meta = made(*args, **kwargs)
        first = meta.regions[0]
        twin = replace(first, name="twin", kind="data")
        return replace(meta, regions=(*meta.regions, twin))

    monkeypatch.setattr(recorder, "_metadata", overlapping)
    out = tmp_path / "t.parquet"
    assert main(["record", "first-switch", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "not written: the trace would not open" in err and "overlap" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_switch_to_just_under_a_stack_into_a_block_of_its_own_is_a_new_stack() -> None:
    """The tutorial runtime's 2 MiB stacks are mmap'd one right under the other: the
    second thread's first rsp lies just under the first's base. A jump there is a switch
    to a new stack; descending there push by push is an overflow of the first."""
    from stacktrace_lab.record.linux.discovery import Allocation, Evidence, name_stacks

    upper, lower, size = 0x200000, 0x100000 - 0x1000, 0x100000
    switched = Evidence(
        outside=[(10, upper + size - 32), (20, upper + size - 64), (30, lower + size - 32)],
        mmaps=[(upper, size), (lower, size)],
    )
    assert [(s.base, s.size) for s in name_stacks(switched, ())] == [
        (upper, size),
        (lower, size),
    ]
    # A 48-byte stack whose overflow runs down into the live block under it.
    overflowing = Evidence(
        outside=[(10, 0x5020), (11, 0x5000), (12, 0x4FF8), (13, 0x4FC0)],
        allocations=[Allocation(1, "calloc", 0x5000, 48), Allocation(2, "malloc", 0x4F00, 200)],
    )
    assert [s.name for s in name_stacks(overflowing, ())] == ["calloc_48"]
