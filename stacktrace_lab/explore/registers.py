"""Which registers an instruction reads and writes, explicitly or not (capstone's detail mode).

`push %rbp` reads rbp and rsp and writes rsp; `syscall` writes rcx and r11.
Asked once per distinct executed instruction, from its bytes (the trace's
`insn_bytes` column, so compiled programs, whose traces do not hold their code,
get it too), so the stepper and `serve` can find the previous or next step that
reads or writes a register, not only the steps that change it. Sub-registers
count as their 64-bit register (`%ecx` is rcx), flags as rflags.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from capstone import x86 as cs_x86

from ..analysis.decoded import decode


@dataclass(frozen=True)
class RegisterUse:
    reads: frozenset[str]
    writes: frozenset[str]

    def touches(self, register: str) -> bool:
        return register in self.reads or register in self.writes


def register_use(instructions: Iterable[tuple[int, bytes]]) -> dict[int, RegisterUse]:
    """The registers each instruction, given as (address, bytes), reads and writes
    (instructions capstone cannot decode are left out)."""
    out: dict[int, RegisterUse] = {}
    for addr, data in instructions:
        decoded = decode(addr, data)
        if decoded.id != cs_x86.X86_INS_INVALID:
            out[addr] = RegisterUse(decoded.reads, decoded.writes)
    return out
