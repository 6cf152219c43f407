"""Which registers an instruction reads and writes, explicitly or not (capstone's detail mode).

`push %rbp` reads rbp and rsp and writes rsp; `syscall` writes rcx and r11.
Asked once per distinct instruction address of a trace, from the code bytes
its metadata holds, so the stepper and `serve` can find the previous or next
step that reads or writes a register, not only the steps that change it.
Sub-registers count as their 64-bit register (`%ecx` is rcx).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import capstone

from ..analysis.decoded import register_column
from ..arch import REGISTERS
from ..trace.format import TraceMetadata

#: The longest x86 instruction.
MAX_INSN = 15


@dataclass(frozen=True)
class RegisterUse:
    reads: frozenset[str]
    writes: frozenset[str]

    def touches(self, register: str) -> bool:
        return register in self.reads or register in self.writes


def _full_name(name: str) -> str | None:
    if name in ("rflags", "eflags", "flags"):
        return "rflags"
    if name in ("rip", "eip"):
        return "rip"
    full = register_column(name)
    return full if full in REGISTERS else None


def register_use(meta: TraceMetadata, addrs: Iterable[int]) -> dict[int, RegisterUse]:
    """The registers each instruction at `addrs` reads and writes (addresses whose bytes the
    trace's code does not hold, or that capstone cannot decode, are left out)."""
    disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    disassembler.detail = True
    code, base = meta.code, meta.code_base
    out: dict[int, RegisterUse] = {}
    for addr in addrs:
        if not base <= addr < base + len(code):
            continue
        chunk = code[addr - base : addr - base + MAX_INSN]
        insn = next(disassembler.disasm(chunk, addr, 1), None)
        if insn is None:
            continue
        try:
            reads, writes = insn.regs_access()
        except capstone.CsError:
            continue
        names = [
            {n for n in (_full_name(insn.reg_name(r)) for r in regs) if n is not None}
            for regs in (reads, writes)
        ]
        out[addr] = RegisterUse(frozenset(names[0]), frozenset(names[1]))
    return out
