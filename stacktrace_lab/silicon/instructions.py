"""What the comparison needs to know about each instruction, decided once per address by capstone.

Per distinct address: the disassembly, the rflags bits it leaves
architecturally undefined and the ones it defines (capstone's detail mode,
`eflags`), the registers it writes, and whether it talks to the outside
world (syscall, cpuid, xgetbv, rdtsc...) or is a `rep` string instruction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import capstone
import capstone.x86 as cx
import numpy as np

from ..record.machine.cpu import full_register

#: capstone's per-flag bits -> the flag's bit in rflags.
_FLAG_BITS = {"CF": 0, "PF": 2, "AF": 4, "ZF": 6, "SF": 7, "OF": 11}
_UNDEFINED = {getattr(cx, f"X86_EFLAGS_UNDEFINED_{f}"): 1 << b for f, b in _FLAG_BITS.items()}
_DEFINED = {
    getattr(cx, f"X86_EFLAGS_{how}_{f}"): 1 << b
    for f, b in _FLAG_BITS.items()
    for how in ("MODIFY", "SET", "RESET")
}


def _bits(*flags: str) -> int:
    return sum(1 << _FLAG_BITS[f] for f in flags)


#: Where capstone 5's table says less than the Intel SDM, checked against this
#: project's CPUs: a shift by 1 (`shr %rax`, D1 /5) leaves AF undefined, which
#: capstone omits; IMUL and MUL leave SF undefined too ("SF, ZF, AF and PF are
#: undefined"), where capstone lists SF as defined.
_SDM_UNDEFINED = {
    **dict.fromkeys(
        (cx.X86_INS_SHL, cx.X86_INS_SAL, cx.X86_INS_SHR, cx.X86_INS_SAR, cx.X86_INS_SHLD,
         cx.X86_INS_SHRD),
        _bits("AF"),
    ),
    cx.X86_INS_IMUL: _bits("SF", "ZF", "AF", "PF"),
    cx.X86_INS_MUL: _bits("SF", "ZF", "AF", "PF"),
}  # fmt: skip
_SIX = _bits("CF", "PF", "AF", "ZF", "SF", "OF")
_OF = _bits("OF")
#: Instructions capstone 5 says nothing about whose flags the SDM defines: the
#: string compares set CF ZF SF OF and clear AF PF. Left out, a wrong flag after
#: them would hide under an earlier instruction's undefined mask.
_DEFINES_ALL = frozenset(
    (cx.X86_INS_PCMPISTRI, cx.X86_INS_PCMPESTRI, cx.X86_INS_PCMPISTRM, cx.X86_INS_PCMPESTRM)
)
#: OF is defined after a rotate by 1 (capstone: always undefined) and undefined
#: after a shift by any other count (capstone: always defined). A count in cl is
#: not known from the bytes: counted as "not 1" (undefined), as the SDM allows.
_ROTATES = frozenset((cx.X86_INS_RCL, cx.X86_INS_RCR, cx.X86_INS_ROL, cx.X86_INS_ROR))
_SHIFTS = frozenset((cx.X86_INS_SHL, cx.X86_INS_SAL, cx.X86_INS_SHR, cx.X86_INS_SAR))


def _by_one(insn: capstone.CsInsn) -> bool:
    """Whether a shift or rotate's count is the constant 1."""
    # capstone gives the d1 forms (no count byte) an immediate 1 too.
    return [op.imm for op in insn.operands if op.type == cx.X86_OP_IMM] == [1]


_OUTSIDE = {
    cx.X86_INS_SYSCALL: "syscall",
    cx.X86_INS_CPUID: "cpuid",
    cx.X86_INS_XGETBV: "xgetbv",
    cx.X86_INS_RDTSC: "rdtsc",
    cx.X86_INS_RDTSCP: "rdtscp",
    cx.X86_INS_RDRAND: "rdrand",
    cx.X86_INS_RDSEED: "rdseed",
}
_REP_PREFIXES = (cx.X86_PREFIX_REP, cx.X86_PREFIX_REPE, cx.X86_PREFIX_REPNE)
_STRING_GROUPS = ("movs", "stos", "lods", "cmps", "scas", "ins", "outs")


@dataclass(frozen=True)
class MemoryOperand:
    """A memory operand the instruction may write: its address is
    segment base + base + index * scale + displacement, from the registers
    before the instruction (`base` "rip": the next instruction's address)."""

    segment: str  # "fs_base", "gs_base" or ""
    base: str  # a 64-bit register name, "rip", or ""
    index: str
    scale: int
    displacement: int
    size: int
    address_32: bool  # a 32-bit address (the 0x67 prefix): wraps at 4 GiB


@dataclass(frozen=True)
class Instruction:
    text: str
    undefined_flags: int  # rflags bits left undefined
    defined_flags: int  # rflags bits given a defined value
    outside: str | None  # syscall, cpuid, xgetbv, rdtsc, ... or None
    rep_string: bool
    id: int = 0  # capstone's instruction id (X86_INS_...)
    size: int = 0  # in bytes
    #: The memory operands it may write (its destination, or capstone says it
    #: writes): where the native stepper reads memory after it.
    memory_writes: tuple[MemoryOperand, ...] = ()


@dataclass(frozen=True)
class RowFacts:
    """For every row: what its instruction does to flags, and whether it is a `syscall`."""

    undefined_flags: np.ndarray  # uint64 rflags bits
    defined_flags: np.ndarray  # uint64 rflags bits
    is_syscall: np.ndarray  # bool


UNKNOWN = Instruction("(unknown)", 0, 0, None, False)


@functools.cache
def _flag_bits(eflags: int) -> tuple[int, int]:
    """capstone's eflags word -> (rflags bits left undefined, rflags bits defined)."""
    undefined = sum(bit for flag, bit in _UNDEFINED.items() if eflags & flag)
    defined = sum({bit for flag, bit in _DEFINED.items() if eflags & flag})
    return undefined, defined


#: Instructions with a memory operand that touch no memory there.
_NO_ACCESS = frozenset((cx.X86_INS_LEA, cx.X86_INS_NOP, cx.X86_INS_PREFETCH, cx.X86_INS_PREFETCHW,
                        cx.X86_INS_PREFETCHT0, cx.X86_INS_PREFETCHT1, cx.X86_INS_PREFETCHT2,
                        cx.X86_INS_PREFETCHNTA))  # fmt: skip
#: Where capstone's operand size is not what the instruction stores.
_STORED_SIZE = {cx.X86_INS_FXSAVE: 512, cx.X86_INS_FXSAVE64: 512}
_SEGMENT_BASES = {cx.X86_REG_FS: "fs_base", cx.X86_REG_GS: "gs_base"}


def _memory_writes(insn: capstone.CsInsn) -> tuple[MemoryOperand, ...]:
    """The memory operands `insn` (AT&T syntax: the destination last) may write.
    capstone's access flags miss stores (movups, movq to memory), so the last
    operand counts as written too; reading more than was written costs a read, no more."""
    if insn.id in _NO_ACCESS:
        return ()
    operands = insn.operands
    found = []
    for position, op in enumerate(operands):
        if op.type != cx.X86_OP_MEM:
            continue
        if not (op.access & capstone.CS_AC_WRITE or position == len(operands) - 1):
            continue
        mem = op.mem
        base = insn.reg_name(mem.base) if mem.base else ""
        index = insn.reg_name(mem.index) if mem.index else ""
        address_32 = base.startswith("e") or index.startswith("e") or base == "eip"
        found.append(
            MemoryOperand(
                segment=_SEGMENT_BASES.get(mem.segment, ""),
                base="rip" if base in ("rip", "eip") else full_register(base) if base else "",
                index=full_register(index) if index else "",
                scale=mem.scale,
                displacement=mem.disp,
                size=_STORED_SIZE.get(insn.id, op.size),
                address_32=address_32,
            )
        )
    return tuple(found)


class InstructionTable:
    """Decoded instructions by address, from the bytes the native run saw."""

    def __init__(self, code: dict[int, bytes]) -> None:
        self.code = code
        self.md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self.md.syntax = capstone.CS_OPT_SYNTAX_ATT
        self.md.detail = True
        self.cache: dict[int, Instruction] = {}

    def at(self, addr: int) -> Instruction:
        found = self.cache.get(addr)
        if found is None:
            found = self.cache[addr] = self._decode(addr)
        return found

    def _decode(self, addr: int) -> Instruction:
        insn = next(self.md.disasm(self.code.get(addr, b""), addr, 1), None)
        if insn is None:
            return UNKNOWN
        undefined, defined = _flag_bits(insn.eflags)
        undefined |= _SDM_UNDEFINED.get(insn.id, 0)
        if insn.id in _DEFINES_ALL:
            undefined, defined = 0, _SIX
        elif insn.id in _ROTATES and _by_one(insn):
            undefined, defined = undefined & ~_OF, defined | _OF
        elif insn.id in _SHIFTS and not _by_one(insn):
            undefined, defined = undefined | _OF, defined & ~_OF
        mnemonic = insn.mnemonic
        rep = mnemonic.startswith("rep") and any(p in _REP_PREFIXES for p in insn.prefix)
        return Instruction(
            text=f"{mnemonic} {insn.op_str}".strip(),
            undefined_flags=undefined,
            defined_flags=defined & ~undefined,
            outside=_OUTSIDE.get(insn.id),
            rep_string=rep and mnemonic.split()[-1].startswith(_STRING_GROUPS),
            id=insn.id,
            size=insn.size,
            memory_writes=_memory_writes(insn),
        )

    def forget(self, addr: int) -> None:
        """The code at `addr` was rewritten since it was decoded: decode it again when asked."""
        self.cache.pop(addr, None)

    def writes(self, addr: int) -> frozenset[str]:
        """The trace columns the instruction at `addr` writes (rip always); decoded when asked:
        only the explanation of a divergence needs it."""
        insn = next(self.md.disasm(self.code.get(addr, b""), addr, 1), None)
        if insn is None:
            return frozenset()
        # Here, not at import: the analysis package is not needed to compare.
        from ..analysis.decoded import register_column

        try:
            _, written = insn.regs_access()
            writes = {c for c in (register_column(insn.reg_name(r)) for r in written) if c}
        except capstone.CsError:
            writes = set()
        at = self.at(addr)
        if at.defined_flags or at.undefined_flags:
            writes.add("rflags")
        return frozenset(writes | {"rip"})

    def row_facts(self, rips: np.ndarray) -> RowFacts:
        """The per-row facts the normalisations need, with one decode per distinct address."""
        inverse, instructions = self.per_row(rips)
        return RowFacts(
            undefined_flags=np.array([i.undefined_flags for i in instructions], np.uint64)[inverse],
            defined_flags=np.array([i.defined_flags for i in instructions], np.uint64)[inverse],
            is_syscall=np.array([i.outside == "syscall" for i in instructions], bool)[inverse],
        )

    def per_row(self, rips: np.ndarray) -> tuple[np.ndarray, list[Instruction]]:
        """(index into the returned list for every row, the distinct instructions)."""
        unique, inverse = np.unique(rips, return_inverse=True)
        return inverse, [self.at(int(a)) for a in unique]
