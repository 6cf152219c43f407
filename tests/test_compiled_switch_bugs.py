"""Bugs planted in context switches written the way real runtimes write them, found at
the mistake (issue 20's runtime table: minicoro, libaco, marl and libco, measured in
/tmp on their own code; these are small programs of our own in the same techniques).

- tests/switch_programs/jmp_switch.c: a jmp-resume switch (minicoro, libaco, marl).
  Saving `rsp + 8` resumes one slot off: the `ret` after the resume pops data, and the
  mistake is the save, not whatever wrote the data.
- tests/switch_programs/push_ret_switch.c: a push-and-ret switch (libco's coctx_swap).
  Stepping 16 bytes instead of 8 before the push plants the entry one slot off: the
  mistake is the switch's push, not the code that saved the (correct) stack pointer.
- tests/switch_programs/fcontext_switch.c: a make-context that returns the context
  (Boost.Context's make_fcontext/jump_fcontext). Laying the context 8 bytes too low
  enters the function misaligned through the trampoline's jmp: the mistake is the
  make-context's `lea`, found by following the stack pointer from its return value
  through the caller's `ctx[]` into rdi and rsp, not the trampoline. With Boost's own
  layout (one more push in the trampoline, `lea -0x48` after `and $-16`), a `lea -0x50`
  keeps the residue: the offset right after the alignment is the mistake.
- A jump to address 0 is the fetch fault Linux gives, not a `halted` run.

Built at test time with gcc; skipped where gcc cannot build static programs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stacktrace_lab.analysis.check import CheckResult, check
from stacktrace_lab.examples import compiler_missing
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.trace import load_trace

PROGRAMS = Path(__file__).parent / "switch_programs"


def _build(tmp_path: Path, source: str, name: str, *defines: str) -> Path:
    why = compiler_missing("c-static")
    if why is not None:
        pytest.skip(f"cannot build a C program: {why}")
    program = tmp_path / name
    flags = [f"-D{d}" for d in defines]
    subprocess.run(
        ["gcc", "-static", "-g", "-O2", *flags, "-o", str(program), str(PROGRAMS / source)],
        check=True,
    )
    return program


def _check(program: Path, tmp_path: Path) -> CheckResult:
    rec = record_elf(program, tmp_path / f"{program.name}.parquet", from_symbol="main")
    return check(load_trace(rec.path))


def test_a_jmp_resume_switch_that_saves_rsp_right_keeps_every_invariant(tmp_path: Path) -> None:
    result = _check(_build(tmp_path, "jmp_switch.c", "ok", 'SAVED="0"'), tmp_path)
    assert result.holds, [v.message for r in result.results for v in r.violations]


def test_a_stack_pointer_saved_8_bytes_off_is_blamed_on_the_save(tmp_path: Path) -> None:
    result = _check(_build(tmp_path, "jmp_switch.c", "off", 'SAVED="8"'), tmp_path)
    assert result.result("stop").holds is False  # SIGSEGV natively too
    (cause,) = result.result("ret-source").causes
    # Not the `pushq %rbx` in main that wrote the data the ret popped: the save in sw.
    assert cause.kind == "saved-stack-pointer"
    assert cause.site_symbol.startswith("sw+")
    message = cause.first.message
    assert "The return address is 8 bytes below" in message
    assert "by `movq %rax, (%rdi)` in sw+" in message
    assert "so the ret popped the slot above the return address" in message


def test_a_push_and_ret_switch_that_steps_right_keeps_every_invariant(tmp_path: Path) -> None:
    result = _check(_build(tmp_path, "push_ret_switch.c", "ok", 'STEP="8"'), tmp_path)
    assert result.holds, [v.message for r in result.results for v in r.violations]


def test_a_switch_that_plants_its_entry_one_slot_off_is_blamed_on_its_push(
    tmp_path: Path,
) -> None:
    result = _check(_build(tmp_path, "push_ret_switch.c", "off", 'STEP="16"'), tmp_path)
    first = result.result("alignment").causes[0]
    assert first.kind == "misaligned-entry"
    # The stack pointer main saved is on the grid; the switch's push is 8 bytes above it.
    assert first.site_symbol.startswith("sw+"), first.site_symbol
    assert "by `pushq 8(%rsi)` in sw+" in first.first.message
    assert "moved rsp +8 bytes before planting" in first.first.message


def test_a_jump_to_address_0_is_a_fetch_fault(tmp_path: Path) -> None:
    source = tmp_path / "null.c"
    source.write_text(
        "#include <stdio.h>\n"
        'int main(void) { void (*volatile f)(void) = 0; puts("x"); f(); return 0; }\n'
    )
    why = compiler_missing("c-static")
    if why is not None:
        pytest.skip(f"cannot build a C program: {why}")
    program = tmp_path / "null"
    subprocess.run(["gcc", "-static", "-g", "-o", str(program), str(source)], check=True)
    rec = record_elf(program, tmp_path / "null.parquet", from_symbol="main")
    stop = rec.metadata.stop
    assert (stop.reason, stop.detail) == (
        "fault",
        "fetch from unmapped memory: 1 bytes at 0x0 (rip 0x0)",
    )
    assert not check(load_trace(rec.path)).result("stop").holds


def test_a_make_context_that_returns_the_context_right_keeps_every_invariant(
    tmp_path: Path,
) -> None:
    result = _check(_build(tmp_path, "fcontext_switch.c", "ok", 'FRAME="-0x40"'), tmp_path)
    assert result.holds, [v.message for r in result.results for v in r.violations]


def test_a_context_laid_8_bytes_low_is_blamed_on_the_lea_that_computed_it(
    tmp_path: Path,
) -> None:
    result = _check(_build(tmp_path, "fcontext_switch.c", "off", 'FRAME="-0x48"'), tmp_path)
    (cause,) = result.result("alignment").causes
    assert cause.kind == "misaligned-entry"
    # Not the trampoline's `jmp *%rbx`, which only passes the stack pointer on.
    assert cause.site_symbol.startswith("make_ctx+"), cause.site_symbol
    message = cause.first.message
    assert "co entered with rsp % 16 == 0" in message
    assert "computed at step" in message and "by `leaq -0x48(%rax), %rax` in make_ctx+" in message
    assert "push a return address" not in message


def test_an_offset_that_keeps_the_aligned_top_on_the_grid_is_blamed_on_that_offset(
    tmp_path: Path,
) -> None:
    """Boost's own layout: `and $-16` then `lea -0x48` puts the context 8 bytes off the
    grid. A `lea -0x50` changes no residue, so following the residue alone stops at the
    `and` (which changed nothing either): the offset right after the alignment is the
    mistake."""
    good = _build(tmp_path, "fcontext_switch.c", "ok2", 'FRAME="-0x48"', "FRAME_PUSH")
    result = _check(good, tmp_path)
    assert result.holds, [v.message for r in result.results for v in r.violations]

    bad = _build(tmp_path, "fcontext_switch.c", "off2", 'FRAME="-0x50"', "FRAME_PUSH")
    (cause,) = _check(bad, tmp_path).result("alignment").causes
    assert cause.kind == "misaligned-entry"
    assert cause.site_symbol.startswith("make_ctx+"), cause.site_symbol
    assert "by `leaq -0x50(%rax), %rax` in make_ctx+" in cause.first.message
