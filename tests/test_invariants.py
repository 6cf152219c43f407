"""The invariants, on the seed and on small programs that each break exactly one rule."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from stacktrace_lab.analysis import INVARIANTS, CheckResult, check, derive_facts
from stacktrace_lab.analysis.kinds import Kind, Origin
from stacktrace_lab.record.recorder import Recording, RecordOptions
from stacktrace_lab.scenario import INVARIANT_IDS, load_scenario
from stacktrace_lab.trace.reader import load_trace

from .programs import ZERO_R12

RecordSource = Callable[..., Recording]

# The seed's source, re-escaped for the TOML basic string the fixtures write it into.
SEED = load_scenario("first-switch").source.replace("\\", "\\\\")
SEED_STACKS = (("main", 65536), ("green", 48))
HELLO = "I LOVE WAKING UP ON A NEW STACK!\\n"


def check_source(record_source: RecordSource, source: str, **kwargs: object) -> CheckResult:
    recording = record_source(source, **kwargs)
    return check(load_trace(recording.path))


def assert_fails_only(result: CheckResult, invariant: str) -> None:
    assert result.failed == (invariant,), [
        (r.id, [v.message for v in r.violations]) for r in result.results if not r.holds
    ]


def test_the_registry_has_the_documented_ids() -> None:
    assert tuple(i.id for i in INVARIANTS) == INVARIANT_IDS


# --- the seed -------------------------------------------------------------------


def test_first_switch_holds_every_invariant(first_switch_trace: Path) -> None:
    result = check(load_trace(first_switch_trace))
    assert result.holds
    assert result.exit_status == 0
    assert [r.id for r in result.results] == list(INVARIANT_IDS)


def test_first_switch_has_exactly_one_planted_return(first_switch_trace: Path) -> None:
    result = check(load_trace(first_switch_trace))
    assert result.planted_total == 1
    (planted,) = result.planted
    assert (planted.region, planted.index, planted.target) == ("green", 32, "hello")
    assert planted.planted_step == 6
    assert planted.planted_insn == "movq %rcx, 0x20(%rax)"
    assert planted.ret_step == 12
    assert planted.ret_symbol == "gt_switch+3"
    green = load_trace(first_switch_trace).metadata.region("green")
    assert planted.entry_rsp == green.base + 40
    assert planted.entry_rsp % 16 == 8  # hello is entered as if called


def test_first_switch_events(first_switch_trace: Path) -> None:
    facts = derive_facts(load_trace(first_switch_trace))
    assert facts.calls.tolist() == [10]
    assert facts.returns.step.tolist() == [12]
    assert facts.returns.origin.tolist() == [Origin.PLANTED]
    # the syscall writes nothing (the kernel's reads of the message are not recorded)
    assert facts.kind[17] == Kind.SYSCALL
    assert 17 not in facts.writes.step.tolist()
    # writes: push rbp, ctx = 0, the plant, ctx.rsp, the call's return address
    assert facts.writes.step.tolist() == [0, 3, 6, 8, 10]
    assert facts.switch_steps().tolist() == [11]
    assert [s.name for s in facts.stacks_used()] == ["main", "green"]


# --- each rule broken alone -------------------------------------------------------


def test_slot_at_ssize_minus_8_misaligns_hello(record_source: RecordSource) -> None:
    source = SEED.replace("SSIZE-16", "SSIZE-8")
    expect = f'[expect]\nstdout = "{HELLO}"\nstop = "spin"\n'
    expect += '[[expect.ret]]\nstack = "green"\nindex = 40\ntarget = "hello"\n'
    result = check_source(record_source, source, stacks=SEED_STACKS, extra=expect)
    assert_fails_only(result, "alignment")
    (violation,) = result.result("alignment").violations
    assert violation.step == 13
    assert violation.symbol == "hello+0"
    assert "hello entered with rsp % 16 == 0" in violation.message
    assert "index 40 of green" in violation.message
    assert "8 bytes off the 16-byte grid" in violation.message
    assert "plant it at index 32 (= size - 16)" in violation.message
    (planted,) = result.planted
    assert (planted.region, planted.index, planted.target) == ("green", 40, "hello")


def test_misaligned_call(record_source: RecordSource) -> None:
    result = check_source(
        record_source,
        """
        main:
            call f          # entered with rsp % 16 == 8, so the call is 8 bytes off
            ret
        f:
            ret
        """,
    )
    assert_fails_only(result, "alignment")
    (violation,) = result.result("alignment").violations
    assert violation.step == 0
    assert "call to f with rsp % 16 == 8" in violation.message


def test_function_zeroing_r12_breaks_callee_saved(record_source: RecordSource) -> None:
    result = check_source(
        record_source,
        ZERO_R12,
    )
    assert_fails_only(result, "callee-saved")
    (violation,) = result.result("callee-saved").violations
    assert violation.symbol == "zero_r12+3"  # reported at the ret that gives r12 back wrong
    assert violation.message.startswith("r12 changed across the call to zero_r12")
    assert "r12 0x7 before, 0x0 after" in violation.message
    assert "rbx" not in violation.message


def test_pushing_below_a_small_stack_is_an_overflow(record_source: RecordSource) -> None:
    result = check_source(
        record_source,
        """
        main:
            movabs $tiny_top, %rsp
            push %rax
            push %rax
            push %rax       # the third push writes 8 bytes below tiny's base
            push %rax
            push %rax
            hlt
        """,
        stacks=(("main", 4096), ("tiny", 16)),
    )
    assert_fails_only(result, "stack-bounds")
    (violation,) = result.result("stack-bounds").violations
    assert violation.step == 3
    assert violation.message.startswith("tiny (16 bytes) overflows by 24 bytes")
    assert "here a write at tiny[-8]" in violation.message
    assert "3 writes land below the base, the deepest at tiny[-24] (step 5)" in violation.message
    assert "rsp goes down to tiny[-24] (step 5)" in violation.message
    assert "tiny needs at least 40 bytes" in violation.message


def test_rsp_pointing_nowhere_breaks_stack_bounds(record_source: RecordSource) -> None:
    result = check_source(
        record_source,
        """
        main:
            mov $0x1234, %rsp
            mov $0, %rax
            hlt
        """,
    )
    assert_fails_only(result, "stack-bounds")
    (violation,) = result.result("stack-bounds").violations
    assert violation.step == 0  # the instruction that moved rsp out, one finding for the run
    assert "moves rsp to 0x1234, outside every stack" in violation.message


def test_ret_popping_a_slot_nobody_wrote(record_source: RecordSource) -> None:
    result = check_source(
        record_source,
        """
        main:
            movabs $tiny_top, %rsp
            sub $16, %rsp
            ret
        """,
        stacks=(("main", 4096), ("tiny", 64)),
        extra='[expect]\nstop = "fault"',
    )
    assert_fails_only(result, "ret-source")
    (violation,) = result.result("ret-source").violations
    assert violation.step == 2
    assert "ret pops 0x0 from tiny[48], a slot nothing in the program wrote" in violation.message


def test_planting_data_instead_of_code(record_source: RecordSource) -> None:
    result = check_source(
        record_source,
        """
        main:
            movabs $tiny_top, %rax
            lea -32(%rax), %rcx
            movq %rcx, -16(%rax)    # meant the address of a function, planted a stack address
            lea -16(%rax), %rsp
            ret
        """,
        stacks=(("main", 4096), ("tiny", 64)),
    )
    assert "ret-source" in result.failed
    (violation,) = result.result("ret-source").violations
    assert "planted at step 2 by `movq %rcx, -0x10(%rax)`" in violation.message
    assert "(&tiny[32])" in violation.message
    assert "not an address in the code" in violation.message


def test_expectations_that_do_not_match(record_source: RecordSource) -> None:
    expect = '[expect]\nstdout = "hello\\n"\nstop = "returned"\n'
    expect += '[[expect.ret]]\nstack = "green"\nindex = 24\ntarget = "hello"\n'
    result = check_source(record_source, SEED, stacks=SEED_STACKS, extra=expect)
    assert_fails_only(result, "expect")
    messages = [v.message for v in result.result("expect").violations]
    assert len(messages) == 3
    assert any("expects 'hello\\n'" in m for m in messages)
    assert any("stopped: spin" in m and "expects stop reason returned" in m for m in messages)
    assert any("index 24 of green" in m and "index 32 -> hello (step 12)" in m for m in messages)


# --- trampolines and context switches ----------------------------------------------

# A worker stack set up as the green-threads runtime does: at its 16-aligned top s,
# `guard` at s - 16, `skip` (a lone ret) at s - 24, the function at s - 32, and rsp
# pointed at s - 32. The function returns through skip into guard.
TRAMPOLINE = """
main:
    movabs $worker_top, %rax
    movabs $guard, %rcx
    movq %rcx, -16(%rax)
    movabs $skip, %rcx
    movq %rcx, -24(%rax)
    movabs $work, %rcx
    movq %rcx, {work_slot}(%rax)
    lea {work_slot}(%rax), %rsp
    ret
work:
    nop
    ret
skip:
    ret
guard:
    hlt
"""


def test_a_trampoline_has_no_alignment_rule_of_its_own(record_source: RecordSource) -> None:
    result = check_source(
        record_source,
        TRAMPOLINE.format(work_slot=-32),
        stacks=(("main", 4096), ("worker", 256)),
    )
    assert result.holds
    assert [(p.index, p.target) for p in result.planted] == [
        (256 - 32, "work"),
        (256 - 24, "skip"),
        (256 - 16, "guard"),
    ]
    # work is the first code on worker (an entry); skip is where work returns to
    # (its ret pops the slot above work's entry rsp), and guard where skip passes on to
    assert [p.landing for p in result.planted] == ["entry", "return", "other"]


def test_without_skip_the_function_is_entered_misaligned(record_source: RecordSource) -> None:
    source = TRAMPOLINE.format(work_slot=-24).replace(
        "    movabs $skip, %rcx\n    movq %rcx, -24(%rax)\n", ""
    )
    result = check_source(record_source, source, stacks=(("main", 4096), ("worker", 256)))
    assert_fails_only(result, "alignment")
    (violation,) = result.result("alignment").violations
    assert violation.symbol == "work+0"
    assert "index 232 of worker" in violation.message


# main calls switch(&main_ctx, &worker_ctx); the worker calls switch back; main's
# call returns through the worker's switch, matched by its return-address slot.
CONTEXT_SWITCH = """
main:
    push %rbp
    mov $11, %rbx
    mov $12, %r12
    movabs $worker_top, %rax
    movabs $work, %rcx
    movq %rcx, -16(%rax)
    lea -16(%rax), %rdx
    movabs $ctx_base, %rdi
    movq %rdx, 32(%rdi)
    lea 32(%rdi), %rsi
    call switch
    pop %rbp
    ret
switch:
    movq %rsp, 0(%rdi)
    movq %rbx, 8(%rdi)
    movq %r12, 16(%rdi)
    movq 0(%rsi), %rsp
    movq 8(%rsi), %rbx
    {restore_r12}
    ret
work:
    push %rbp
    mov $99, %rbx
    mov $98, %r12
    movabs $ctx_base, %rsi
    lea 32(%rsi), %rdi
    call switch
    hlt
"""


def test_callee_saved_is_matched_through_a_context_switch(record_source: RecordSource) -> None:
    recording = record_source(
        CONTEXT_SWITCH.format(restore_r12="movq 16(%rsi), %r12"),
        stacks=(("main", 4096), ("worker", 256)),
        data=(("ctx", 64),),
    )
    trace = load_trace(recording.path)
    facts = derive_facts(trace)
    origins = facts.returns.origin.tolist()
    assert origins == [Origin.PLANTED, Origin.CALL, Origin.ENTRY]
    assert recording.metadata.stop.reason == "returned"
    result = check(trace, facts)
    assert result.holds


def test_a_switch_that_forgets_r12(record_source: RecordSource) -> None:
    result = check_source(
        record_source,
        CONTEXT_SWITCH.format(restore_r12="nop"),
        stacks=(("main", 4096), ("worker", 256)),
        data=(("ctx", 64),),
    )
    assert_fails_only(result, "callee-saved")
    (violation,) = result.result("callee-saved").violations
    assert violation.message.startswith("r12 changed across the call to switch")
    assert "through a stack switch" in violation.message
    assert "r12 0xc before, 0x62 after" in violation.message


@pytest.mark.parametrize("row_group_size", [1, 2, 3])
def test_row_group_boundaries_change_nothing(
    record_source: RecordSource, row_group_size: int
) -> None:
    """Calls and rets landing in the next row group are matched like any others."""
    source = CONTEXT_SWITCH.format(restore_r12="nop")
    kwargs: dict[str, object] = {
        "stacks": (("main", 4096), ("worker", 256)),
        "data": (("ctx", 64),),
    }
    whole = derive_facts(load_trace(record_source(source, **kwargs).path))
    options = RecordOptions(row_group_size=row_group_size)
    split_trace = load_trace(record_source(source, options=options, **kwargs).path)
    assert split_trace.num_row_groups > 10
    split = derive_facts(split_trace)
    assert split.call_targets.tolist() == whole.call_targets.tolist()
    assert split.returns.value.tolist() == whole.returns.value.tolist()
    assert split.returns.origin.tolist() == whole.returns.origin.tolist()
    assert split.returns.writer.tolist() == whole.returns.writer.tolist()
    # The two recordings come from two scenario files: their source lines name them.
    split_json = json.dumps(check(split_trace, split).to_json()["invariants"])
    whole_json = json.dumps(check(whole.trace, whole).to_json()["invariants"])
    split_name = split_trace.path.with_suffix(".toml").name
    whole_name = whole.trace.path.with_suffix(".toml").name
    assert split_json.replace(split_name, whole_name) == whole_json
