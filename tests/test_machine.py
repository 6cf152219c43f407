"""The emulated machine: a table of small programs with the state they must end in."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from stacktrace_lab.layout import SENTINEL_RETURN
from stacktrace_lab.record.recorder import RecordOptions
from stacktrace_lab.trace import load_trace

STACK_TOP = 0x10001000  # the `main` stack of the test scenarios: 4096 bytes, first region


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    stop: str
    final: dict[str, int] = field(default_factory=dict)
    stdout: str = ""
    steps: int | None = None
    syntax: str = "att"


CASES = [
    Case(
        "return",
        "main:\n mov $7, %rax\n ret",
        "returned",
        {"rax": 7, "rsp": STACK_TOP, "rip": SENTINEL_RETURN},
        steps=2,
    ),
    Case(
        "decimal-immediates", "main:\n mov $32, %rbx\n add $16, %rbx\n ret", "returned", {"rbx": 48}
    ),
    Case(
        "intel",
        "main:\n mov rbx, 32\n lea rcx, [rbx+10]\n ret",
        "returned",
        {"rbx": 32, "rcx": 42},
        syntax="intel",
    ),
    Case(
        "call-and-return",
        "main:\n sub $8, %rsp\n call f\n add $8, %rsp\n ret\nf:\n mov $5, %r12\n ret",
        "returned",
        {"r12": 5, "rsp": STACK_TOP},
        steps=6,
    ),
    Case(
        "push-pop",
        "main:\n mov $3, %rax\n push %rax\n pop %rbx\n ret",
        "returned",
        {"rbx": 3, "rsp": STACK_TOP},
    ),
    Case("halt", "main:\n mov $1, %rax\n hlt\n mov $2, %rax", "halted", {"rax": 1}, steps=2),
    Case(
        "exit",
        "main:\n mov $60, %eax\n mov $3, %edi\n syscall\n mov $9, %rbx",
        "exit",
        {"rbx": 0},
        steps=3,
    ),
    Case("exit-group", "main:\n mov $231, %eax\n mov $0, %edi\n syscall\n nop", "exit", steps=3),
    Case(
        "spin",
        "main:\n mov $1, %rax\n jmp main_loop\nmain_loop:\n jmp main_loop",
        "spin",
        {"rax": 1},
        steps=3,
    ),
    Case(
        "write-syscall",
        "main:\n mov $1, %eax\n mov $1, %edi\n lea .Lmsg(%rip), %rsi\n mov $3, %edx\n"
        ' syscall\n ret\n.Lmsg:\n .ascii "hi\\\\n"',
        "returned",
        {"rax": 3},
        stdout="hi\n",
    ),
    Case(
        "unknown-syscall-is-enosys",
        "main:\n mov $999, %eax\n syscall\n ret",
        "returned",
        {"rax": (-38) & (2**64 - 1)},
    ),
    # The CPU retires each iteration of a rep string instruction as one step
    # (single-stepped, it traps after each): 3 iterations are 3 rows, not
    # unicorn's 4 (it re-enters once more to find rcx == 0).
    Case(
        "rep-stosb-steps-as-the-cpu",
        "main:\n mov $3, %ecx\n lea -64(%rsp), %rdi\n rep stosb\n ret",
        "returned",
        {"rcx": 0, "rdi": STACK_TOP - 8 - 64 + 3},
        steps=6,
    ),
    Case(
        "rep-stosb-with-rcx-zero-is-one-step",
        "main:\n mov $0, %ecx\n lea -64(%rsp), %rdi\n rep stosb\n ret",
        "returned",
        {"rcx": 0, "rdi": STACK_TOP - 8 - 64},
        steps=4,
    ),
    # `syscall` itself sets rcx to the next instruction and r11 to rflags.
    Case(
        "syscall-sets-rcx-and-r11",
        "main:\n mov $999, %eax\n syscall\n ret",
        "returned",
        {"rcx": 0x400000 + 5 + 2, "r11": 0x202},
    ),
    Case(
        "write-to-bad-fd",
        "main:\n mov $1, %eax\n mov $7, %edi\n syscall\n ret",
        "returned",
        {"rax": (-9) & (2**64 - 1)},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_program(record_source, case: Case) -> None:
    recording = record_source(case.source, syntax=case.syntax)
    meta = recording.metadata
    assert meta.stop.reason == case.stop, meta.stop
    for name, value in case.final.items():
        assert meta.final[name] == value, name
    assert meta.stdout == case.stdout
    if case.steps is not None:
        assert meta.steps == case.steps
    assert load_trace(recording.path).num_rows == meta.steps
    assert meta.stop.step == meta.steps - 1


def test_initial_state(record_source) -> None:
    meta = record_source("main:\n ret").metadata
    assert meta.initial["rsp"] == STACK_TOP - 8
    assert meta.initial["rsp"] % 16 == 8  # entered as if called
    assert meta.initial["rip"] == meta.symbols["main"]
    rows = load_trace(record_source("main:\n ret").path).rows()
    assert rows["reads"][0][0]["data"] == SENTINEL_RETURN.to_bytes(8, "little")


def test_write_to_unmapped_memory_faults_and_keeps_the_steps_before(record_source) -> None:
    recording = record_source(
        "main:\n nop\n mov $5, %rax\n movabs $0x20000000, %rbx\n movq %rax, (%rbx)\n nop\n ret"
    )
    meta = recording.metadata
    assert meta.stop.reason == "fault"
    assert "0x20000000" in meta.stop.detail and "write" in meta.stop.detail
    rows = load_trace(recording.path).rows()
    assert list(rows["insn"].astype(str)) == [
        "nop",
        "movabsq $5, %rax",
        "movabsq $0x20000000, %rbx",
        "movq %rax, (%rbx)",
    ]
    # The refused write never happened, so it is not in the trace.
    assert list(rows["writes"].iloc[-1]) == []
    assert meta.stop.step == 3


def test_write_to_code_is_a_protection_fault(record_source) -> None:
    meta = record_source("main:\n movabs $main, %rax\n movq $0, (%rax)\n ret").metadata
    assert meta.stop.reason == "fault"
    assert "protected" in meta.stop.detail


def test_jump_to_unmapped_code_faults(record_source) -> None:
    meta = record_source("main:\n movabs $0x30000000, %rax\n jmp *%rax").metadata
    assert meta.stop.reason == "fault"
    assert "fetch" in meta.stop.detail and "0x30000000" in meta.stop.detail
    assert meta.steps == 2


@pytest.mark.parametrize(
    ("source", "detail"),
    [
        ("main:\n nop\n ud2\n ret", "invalid instruction at 0x400001"),
        ("main:\n mov $1, %rax\n xor %rcx, %rcx\n div %rcx\n ret", "divide error (#DE)"),
        ("main:\n nop\n int3\n ret", "breakpoint (#BP, int3) at 0x400001"),
    ],
)
def test_cpu_exceptions_are_named_faults(record_source, source: str, detail: str) -> None:
    meta = record_source(source).metadata
    assert meta.stop.reason == "fault"
    assert detail in meta.stop.detail
    assert meta.stop.step == meta.steps - 1  # the faulting instruction is the last row


def test_guard_page_below_a_stack_faults(record_source) -> None:
    # Pushing past the first page of the stack region hits the unmapped guard page.
    meta = record_source(
        "main:\n push %rax\n jmp main",
        stacks=(("main", 4096),),
        options=RecordOptions(max_steps=10_000),
    ).metadata
    assert meta.stop.reason == "fault"
    assert "write" in meta.stop.detail


def test_counter_loop_stops_at_max_steps(record_source) -> None:
    # while (1) counter++: no self-jump, so only the step limit ends it.
    meta = record_source(
        "main:\n inc %rax\n jmp main", options=RecordOptions(max_steps=1000)
    ).metadata
    assert meta.stop.reason == "max_steps"
    assert meta.steps == 1000
    assert meta.final["rax"] == 500


def test_sse_store_is_one_sixteen_byte_write(record_source) -> None:
    recording = record_source(
        "main:\n mov $0x1122334455667788, %rax\n movq %rax, %xmm0\n"
        " movdqu %xmm0, -32(%rsp)\n movdqu -32(%rsp), %xmm1\n ret"
    )
    rows = load_trace(recording.path).rows()
    store = rows[rows["insn"].astype(str).str.startswith("movdqu %xmm0")].iloc[0]
    assert len(store["writes"]) == 1
    write = store["writes"][0]
    assert write["size"] == 16
    assert write["data"] == bytes.fromhex("8877665544332211") + bytes(8)
    load = rows[rows["insn"].astype(str).str.startswith("movdqu -")].iloc[0]
    assert [r["size"] for r in load["reads"]] == [16]
