"""Instructions decoded from their bytes with capstone's detail mode, for the analyses.

The trace's `insn` column is text for people. What an instruction does (a
move of an immediate, a load into rsp, `and $-16, %rsp`) is read here from
its bytes, the `insn_bytes` column every trace is handed out with: the
instruction id, and per operand its type, whether it is read or written, the
register (as the trace column it is part of: `%ecx` is rcx) or the memory
operand's base, index, scale, displacement and segment.

Operands are in capstone's native (Intel) order, the destination first.
capstone 5's AT&T mode reverses them but also loses some: `stosq` comes back
with one operand, the memory as read. Each operand still carries its AT&T
text as the trace prints it, for messages only; no decision reads it.

Each distinct (rip, bytes) is decoded once per process.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from capstone import (
    CS_AC_READ,
    CS_AC_WRITE,
    CS_ARCH_X86,
    CS_MODE_64,
    CS_OPT_SYNTAX_ATT,
    Cs,
    CsError,
    CsInsn,
)
from capstone import x86 as cs_x86
from capstone.x86 import X86Op

from ..arch import REGISTERS
from ..record.asm.operands import split_operands

#: The 16 general registers, as trace columns: the ones whose values a chain of moves carries.
GENERAL_REGISTERS = frozenset(REGISTERS) - {"rip", "rflags"}
#: How many distinct instructions to keep decoded: far more than a program's code has.
_CACHE_SIZE = 1 << 16


class OperandType(Enum):
    REG = "reg"
    IMM = "imm"
    MEM = "mem"


@dataclass(frozen=True)
class Operand:
    type: OperandType
    size: int  # bytes
    read: bool
    written: bool
    #: REG: the trace column the register is part of (`rcx` for `%ecx`, `rip`);
    #: None for registers the trace does not have (xmm, segment registers).
    register: str | None = None
    #: IMM: the value as a signed 64-bit number (`and $-16` is -16, however printed).
    imm: int = 0
    #: MEM: base and index as trace columns (None when absent or not a general register).
    base: str | None = None
    index: str | None = None
    scale: int = 1
    disp: int = 0
    segment: str | None = None  # `fs`, `gs`, ... when the operand names one
    #: The operand as the trace's AT&T text prints it, for messages; "" if unknown.
    text: str = ""


@dataclass(frozen=True)
class Decoded:
    id: int  # capstone's X86_INS_*; X86_INS_INVALID for bytes that do not decode
    name: str  # capstone's instruction name (`mov`, `movabs`, `and`): no size suffix
    operands: tuple[Operand, ...]  # destination first
    #: Every register (as a trace column) the instruction reads or writes, implicit
    #: ones included: `push %rbp` reads rbp and rsp and writes rsp; `syscall`
    #: writes rcx and r11; flags count as rflags.
    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()

    @property
    def destination(self) -> Operand | None:
        """The operand written by a two-or-more-operand instruction (`push` has none)."""
        return self.operands[0] if len(self.operands) >= 2 else None

    @property
    def source(self) -> Operand | None:
        """Where the value comes from: the last operand (`push %rbp`: its only one)."""
        return self.operands[-1] if self.operands else None

    def writes_register(self, register: str) -> bool:
        """Is `register` (a trace column) this instruction's destination register?"""
        destination = self.destination
        return (
            destination is not None
            and destination.type is OperandType.REG
            and destination.register == register
        )


INVALID = Decoded(cs_x86.X86_INS_INVALID, "(bad)", ())

#: Where capstone 5 lists no implicit registers: `syscall` (the Intel SDM: rcx
#: gets the return rip, r11 the rflags, rflags is masked) and the Linux kernel
#: behind it (it reads the number in rax and up to six arguments in rdi, rsi,
#: rdx, r10, r8 and r9, and returns in rax). Which arguments a call reads
#: depends on the call: all six count, so no access is missed.
_IMPLICIT_REGISTERS = {
    cs_x86.X86_INS_SYSCALL: (
        frozenset({"rax", "rdi", "rsi", "rdx", "r10", "r8", "r9", "rip", "rflags"}),
        frozenset({"rax", "rcx", "r11", "rip", "rflags"}),
    ),
}


def _engine(syntax: int | None) -> Cs:
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    if syntax is not None:
        cs.syntax = syntax
    cs.detail = True  # also for the AT&T text: set up as the recorder's, so it prints the same
    return cs


def _register_columns(cs: Cs) -> dict[int, str]:
    """capstone register id -> the trace column it is part of, for the 16 general registers
    at every width, rip and the flags.

    Read off the encoding rather than a table of names: `mov` to ModRM register
    number n names the same register at 64, 32, 16 and 8 bits (REX.W, none,
    0x66, opcode 0x88 with a REX prefix); only without REX do byte registers
    4-7 mean ah, ch, dh and bh, the high bytes of registers 0-3.
    """

    def destination(code: bytes) -> int:
        insn = next(cs.disasm(code, 0, 1))
        return int(insn.operands[0].reg)

    columns: dict[int, str] = {
        cs_x86.X86_REG_RIP: "rip",
        cs_x86.X86_REG_EIP: "rip",
        cs_x86.X86_REG_EFLAGS: "rflags",
    }
    for n in range(16):
        rex_b = 1 if n >= 8 else 0
        modrm = bytes([0xC0 | (n & 7)])
        full_id = destination(bytes([0x48 | rex_b, 0x89]) + modrm)
        full = cs.reg_name(full_id)
        assert full in REGISTERS, full
        columns[full_id] = full
        for opcode in (b"\x89", b"\x66\x89", b"\x88"):
            rex = bytes([0x40 | rex_b])
            code = opcode[:-1] + rex + opcode[-1:] + modrm  # a prefix, REX, the opcode
            columns[destination(code)] = full
        if n < 4:
            columns[destination(bytes([0x88, 0xC0 | (n + 4)]))] = full
    return columns


class _Decoder:
    def __init__(self) -> None:
        self.detail = _engine(None)
        self.att = _engine(CS_OPT_SYNTAX_ATT)  # only for the operands' text
        self.columns = _register_columns(self.detail)
        #: capstone register name (`ecx`, `r9d`, `ah`) -> trace column.
        self.column_of_name = {self.detail.reg_name(r): c for r, c in self.columns.items()}
        # One capstone handle is not safe to share between threads (`serve` answers in threads).
        self.lock = threading.Lock()


@functools.cache
def _decoder() -> _Decoder:
    return _Decoder()


def register_column(name: str) -> str | None:
    """The trace column a register name is part of (`ecx` -> `rcx`, `r9d` -> `r9`), or None."""
    return _decoder().column_of_name.get(name.lower())


@functools.lru_cache(maxsize=_CACHE_SIZE)
def decode(rip: int, data: bytes) -> Decoded:
    """The instruction `data` encodes at address `rip`; `INVALID` if it does not decode."""
    decoder = _decoder()
    with decoder.lock:
        insn = next(decoder.detail.disasm(data, rip, 1), None)
        att = next(decoder.att.disasm(data, rip, 1), None)
        if insn is None:
            return INVALID
        texts = split_operands(att.op_str) if att is not None and att.op_str else []
        texts.reverse()  # AT&T puts the destination last
        if len(texts) != len(insn.operands):
            texts = [""] * len(insn.operands)
        operands = tuple(
            _operand(insn, op, text, decoder.columns)
            for op, text in zip(insn.operands, texts, strict=True)
        )
        try:
            read_ids, written_ids = insn.regs_access()
        except CsError:  # capstone has no access table for a few instructions
            read_ids, written_ids = [], []
        reads, writes = (
            frozenset(c for c in (decoder.columns.get(int(r)) for r in ids) if c is not None)
            for ids in (read_ids, written_ids)
        )
        more_reads, more_writes = _IMPLICIT_REGISTERS.get(insn.id, (frozenset(), frozenset()))
        name = str(insn.insn_name())
        return Decoded(int(insn.id), name, operands, reads | more_reads, writes | more_writes)


def _operand(insn: CsInsn, op: X86Op, text: str, columns: dict[int, str]) -> Operand:
    access = int(op.access)
    read, written = bool(access & CS_AC_READ), bool(access & CS_AC_WRITE)
    size = int(op.size)
    if op.type == cs_x86.X86_OP_REG:
        register = columns.get(int(op.reg))
        return Operand(OperandType.REG, size, read, written, register=register, text=text)
    if op.type == cs_x86.X86_OP_IMM:
        value = int(op.imm)
        if value >= 1 << 63:
            value -= 1 << 64
        return Operand(OperandType.IMM, size, read, written, imm=value, text=text)
    mem = op.mem
    return Operand(
        OperandType.MEM,
        size,
        read,
        written,
        base=columns.get(int(mem.base)),
        index=columns.get(int(mem.index)),
        scale=int(mem.scale),
        disp=int(mem.disp),
        segment=str(insn.reg_name(mem.segment)) if mem.segment else None,
        text=text,
    )


def decode_rows(rips: Iterable[int], data: Iterable[bytes]) -> list[Decoded]:
    """`decode` for each row of a table's `rip` and `insn_bytes` columns."""
    return [decode(int(rip), bytes(code)) for rip, code in zip(rips, data, strict=True)]
