"""transfers.py reads what an instruction does from its bytes: the load of a switch's
stack pointer (`saved_stack_pointer`) and an entry's realignment (`realigns`), in
AT&T and Intel sources alike (the trace's text is AT&T either way)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stacktrace_lab.analysis import check
from stacktrace_lab.analysis.decoded import decode
from stacktrace_lab.analysis.events import TraceFacts, derive_facts
from stacktrace_lab.analysis.transfers import is_realign, realigns, saved_stack_pointer
from stacktrace_lab.record.recorder import Recording
from stacktrace_lab.trace import load_trace

RecordSource = Callable[..., Recording]
STACKS = (("main", 4096), ("green", 64))


@pytest.mark.parametrize(
    ("hex_bytes", "text", "realigns"),
    [
        ("4883e4f0", "andq $-16, %rsp", True),
        ("4881e4f0ffffff", "and $0xfffffffffffffff0, %rsp (imm32 encoding)", True),
        ("4883e4e0", "andq $-32, %rsp", True),
        ("4883e4f8", "and $-8, %rsp: not a call's alignment", False),
        ("4883e40f", "and $15, %rsp", False),
        ("83e4f0", "andl $-16, %esp: clears rsp's upper half", False),
        ("4883e0f0", "and $-16, %rax", False),
        ("4821c4", "and %rax, %rsp", False),
        ("4883ecf0", "sub $-16, %rsp", False),
    ],
)
def test_realignment_is_read_from_the_bytes(hex_bytes: str, text: str, realigns: bool) -> None:
    assert is_realign(decode(0x400000, bytes.fromhex(hex_bytes))) is realigns, text


# main plants hello at green:32, saves the stack pointer at (%rsp) (step 5) and calls
# switch, which loads it into rsp ({load}) and rets into hello.
SWITCH = """
main:
    sub $16, %rsp
    movabs $green_base, %rax
    movabs $hello, %rcx
    movq %rcx, 32(%rax)
    lea 32(%rax), %rdx
    movq %rdx, (%rsp)
    mov %rsp, %rdi
    xor %esi, %esi
    call switch
    hlt
switch:
    {load}
    ret
hello:
    hlt
"""
SAVE_STEP = 5

SWITCH_INTEL = """
main:
    sub rsp, 16
    movabs rax, offset green_base
    movabs rcx, offset hello
    mov qword ptr [rax + 32], rcx
    lea rdx, [rax + 32]
    mov qword ptr [rsp], rdx
    mov rdi, rsp
    xor esi, esi
    call switch
    hlt
switch:
    {load}
    ret
hello:
    hlt
"""


def _switch_facts(record_source: RecordSource, source: str, syntax: str = "att") -> TraceFacts:
    facts = derive_facts(load_trace(record_source(source, stacks=STACKS, syntax=syntax).path))
    assert len(facts.transfers) == 1  # the ret into hello
    return facts


def _saved_at(facts: TraceFacts) -> int | None:
    index = saved_stack_pointer(facts, int(facts.transfers.step[0]))
    return None if index < 0 else int(facts.writes.step[index])


@pytest.mark.parametrize(
    ("load", "syntax"),
    [
        ("mov (%rdi), %rsp", "att"),
        # an indexed source: the text pattern this replaces missed it
        ("mov (%rdi,%rsi,8), %rsp", "att"),
        # libaco: through another register
        ("mov (%rdi), %rcx\n    mov %rcx, %rsp", "att"),
        # what else changes rsp after the load (a push and a pop) only adjusts it
        ("mov (%rdi), %rsp\n    push %rax\n    pop %rax", "att"),
        ("mov rsp, qword ptr [rdi]", "intel"),
        ("mov r8, qword ptr [rdi + rsi*8]\n    mov rsp, r8", "intel"),
    ],
)
def test_the_saved_stack_pointer_is_found_from_the_load(
    record_source: RecordSource, load: str, syntax: str
) -> None:
    source = (SWITCH_INTEL if syntax == "intel" else SWITCH).format(load=load)
    assert _saved_at(_switch_facts(record_source, source, syntax)) == SAVE_STEP


@pytest.mark.parametrize(
    "load",
    [
        # rsp not loaded whole by a mov: nothing to name
        "push (%rdi)\n    pop %rsp",
        "mov (%rdi), %rcx\n    lea (%rcx), %rsp",
        # a 32-bit move into esp is not a stack pointer (rsp's upper half is cleared)
        "mov (%rdi), %ecx\n    mov %ecx, %esp",
    ],
)
def test_no_saved_stack_pointer_without_a_64_bit_move(
    record_source: RecordSource, load: str
) -> None:
    facts = _switch_facts(record_source, SWITCH.format(load=load))
    assert _saved_at(facts) is None


# A planted ret enters `entry` with rsp % 16 == 0; {first} may realign it before the call.
REALIGNS = """
main:
    movabs $green_top, %rax
    movabs $entry, %rcx
    movq %rcx, -24(%rax)
    lea -24(%rax), %rsp
    ret
entry:
    {first}
    call leaf
    hlt
leaf:
    ret
"""
REALIGNS_INTEL = """
main:
    movabs rax, offset green_top
    movabs rcx, offset entry
    mov qword ptr [rax - 24], rcx
    lea rsp, [rax - 24]
    ret
entry:
    {first}
    call leaf
    hlt
leaf:
    ret
"""


@pytest.mark.parametrize(
    ("first", "syntax", "realigned"),
    [
        ("and $-16, %rsp", "att", True),
        ("andq $-16, %rsp", "att", True),
        ("and $0xfffffffffffffff0, %rsp", "att", True),
        ("and $-64, %rsp", "att", True),
        # the imm32 form an assembler may choose
        (".byte 0x48, 0x81, 0xe4, 0xf0, 0xff, 0xff, 0xff", "att", True),
        ("and $-8, %rsp", "att", False),
        ("and $-16, %rax", "att", False),
        ("nop", "att", False),
        ("and rsp, -16", "intel", True),
        ("and rsp, 0xfffffffffffffff0", "intel", True),
        ("and rsp, -8", "intel", False),
    ],
)
def test_an_entry_realigns_only_with_and_of_a_16_byte_mask_into_rsp(
    record_source: RecordSource, first: str, syntax: str, realigned: bool
) -> None:
    source = (REALIGNS_INTEL if syntax == "intel" else REALIGNS).format(first=first)
    stacks = (("main", 4096), ("green", 256))  # room below for `and $-64`
    trace = load_trace(record_source(source, stacks=stacks, syntax=syntax).path)
    facts = derive_facts(trace)
    landing = int(facts.transfers.step[0]) + 1
    assert realigns(facts, landing) is realigned
    # and the verdict follows: a realigning entry is a note, not an alignment failure
    assert check(trace).holds is realigned
