"""The x86-64 facts the trace format is built on, as data.

Shared by the recorder and the analysis side, so it must not import unicorn.
"""

from typing import Final

#: Register columns of a trace, in file order. `rip` comes first because it
#: says where each row is; the rest follow the order of the trace format page.
REGISTERS: Final = (
    "rip",
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rbp",
    "rsp",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
    "rflags",
)

#: Registers a System V x86-64 callee must give back unchanged.
CALLEE_SAVED: Final = ("rbx", "rbp", "r12", "r13", "r14", "r15", "rsp")

WORD: Final = 8
PAGE: Final = 0x1000
STACK_ALIGNMENT: Final = 16
