"""A user-mode CPU (issue 16): privileged instructions stop the run with #GP before they run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stacktrace_lab.record.recorder import Recording
from stacktrace_lab.record.user_mode import privileged_instructions
from stacktrace_lab.replay import replay
from stacktrace_lab.trace import load_trace

PRIVILEGED = {
    "cli": "cli",
    "sti": "sti",
    "wrmsr": "wrmsr",
    "rdmsr": "rdmsr",
    "in %dx, %al": "inb %dx, %al",
    "out %al, %dx": "outb %al, %dx",
    "inb $0x60, %al": "inb $0x60, %al",
    "outsb": "outsb (%rsi), %dx",
    "lgdt (%rax)": "lgdtq (%rax)",
    "lidt (%rax)": "lidtq (%rax)",
    "mov %rax, %cr0": "movq %rax, %cr0",
    "mov %cr3, %rax": "movq %cr3, %rax",
    "mov %rax, %dr7": "movq %rax, %dr7",
    "invlpg (%rax)": "invlpg (%rax)",
    "wbinvd": "wbinvd",
    "swapgs": "swapgs",
    "clts": "clts",
}


@pytest.mark.parametrize("instruction", list(PRIVILEGED))
def test_the_fault_names_each_instruction(
    instruction: str, record_source: Callable[..., Recording]
) -> None:
    recording = record_source(f"main:\n    movq $1, %rbx\n    {instruction}\n    ret\n")
    stop, meta = recording.metadata.stop, recording.metadata
    assert (stop.reason, stop.step, meta.steps) == ("fault", 1, 2)
    assert stop.detail == (
        f"general protection fault (#GP) at 0x400007: {PRIVILEGED[instruction]} "
        "is a privileged instruction and the program runs in user mode"
    )
    # It did not execute: rbx was set by the step before, nothing after ran.
    assert meta.final["rip"] == 0x400007 and meta.final["rbx"] == 1
    assert replay(load_trace(recording.path)).matches


def test_sti_does_not_set_the_interrupt_flag(record_source: Callable[..., Recording]) -> None:
    recording = record_source("main:\n    sti\n    ret\n")
    assert recording.metadata.final["rflags"] & 0x200 == 0


@pytest.mark.parametrize(
    "source, reason",
    [
        ("main:\n    hlt\n", "halted"),  # the documented way for a scenario to stop
        ("main:\n    str %ax\n    ret\n", "returned"),  # not privileged without UMIP
        ("main:\n    pushfq\n    popfq\n    ret\n", "returned"),
    ],
)
def test_user_mode_instructions_still_run(
    source: str, reason: str, record_source: Callable[..., Recording]
) -> None:
    assert record_source(source).metadata.stop.reason == reason


def test_a_privileged_instruction_hidden_as_bytes_or_inside_another_is_found() -> None:
    # `.byte 0xfa` is cli; `movabs $0x...fa..., %rax` holds 0xfa at offset 2, where a
    # jump into the middle of the instruction would run it.
    assert privileged_instructions(bytes([0x90, 0xFA]), 0x400000) == {0x400001: "cli"}
    movabs = bytes([0x48, 0xB8, 0xFA] + [0x90] * 7)
    assert privileged_instructions(movabs, 0x400000) == {0x400002: "cli"}
    assert privileged_instructions(bytes([0x66, 0xEF]), 0) == {
        0: "outw %ax, %dx",
        1: "outl %eax, %dx",
    }
