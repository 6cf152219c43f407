"""Instructions unicorn runs wrongly, and what the machine does instead (docs/pitfalls.md).

Each family was run on the real CPU and in unicorn 2.1.4 side by side
(`stacktrace-lab silicon-check` on a probe scenario per family, the probes in
tests/test_emulator_gaps.py):

- VEX, EVEX and XOP encoded instructions (AVX and later): unicorn decodes
  some and computes them wrongly (`vpaddd %xmm1, %xmm0, %xmm2` leaves 7 where
  the CPU computes 5 + 7 = 12; `vaddps` likewise), and the machine's CPU model
  announces no AVX, so a program that asks CPUID never runs them. The run
  stops before one executes: reason `unsupported`.
- x87 transcendental functions (`fsin`, `fcos`, `fsincos`, `fptan`, `fpatan`,
  `fyl2x`, `fyl2xp1`, `f2xm1`): unicorn computes them through the host's
  64-bit double, so the low 11 bits of the 64-bit significand differ from the
  CPU's (`fsin` of 1.0: ...7000 where the CPU has ...7021). Stop, `unsupported`.
- Legacy SSE instructions whose 16-byte memory operand must be aligned
  (`movaps`, `movdqa`, `addps m128`, `pcmpeqb m128`, `movntdq` ...), and
  `fxsave`/`fxrstor` and `cmpxchg16b`: the CPU raises #GP (SIGSEGV) for a
  misaligned operand, unicorn runs it. Checked at every execution: a
  misaligned one is a `fault`, as on the CPU.

Decided once per instruction address, like the user-mode check (user_mode.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from capstone import x86_const as x86

GP_FAULT = "general protection fault (#GP)"
_LEGACY_PREFIXES = frozenset((0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65))
_X87_TRANSCENDENTAL = frozenset(
    ("fsin", "fcos", "fsincos", "fptan", "fpatan", "fyl2x", "fyl2xp1", "f2xm1")
)
#: 16-byte memory operands these take unaligned (the rest of legacy SSE faults).
UNALIGNED_OK = frozenset(
    (
        "movups",
        "movupd",
        "movdqu",
        "lddqu",
        "pcmpestri",
        "pcmpestrm",
        "pcmpistri",
        "pcmpistrm",
        "maskmovdqu",
    )
)
#: Capstone gives these a smaller operand size, but they need 16-byte alignment.
_ALIGNED_STATE = frozenset(("fxsave", "fxsave64", "fxrstor", "fxrstor64"))


@dataclass(frozen=True)
class Unsupported:
    """The instruction must not run: the run stops with reason `unsupported`."""

    detail: str


@dataclass(frozen=True)
class MustBeAligned:
    """The instruction faults (#GP) when its memory operand is not 16-byte aligned.

    The operand's address is `constant + base + index * scale + segment base`,
    cut to `address_bits`: `constant` is the displacement, plus the next
    instruction's address for a rip-relative operand. The C core computes the
    same sum from the same fields (`StepRules.aligned_operand`, `_core.c`)."""

    text: str  # `mnemonic operands`, for the message
    constant: int  # disp (+ next rip when rip-relative), as an unsigned 64-bit value
    base: str | None  # a general register, never rip
    index: str | None
    scale: int
    segment: str | None  # "fs" or "gs": their base is added (the others' base is 0)
    address_bits: int  # 64, or 32 under an address-size prefix (0x67)

    def address(self, register: Callable[[str], int]) -> int:
        """The operand's address, `register(name)` giving a register's value
        (`fs_base`/`gs_base` for the segments)."""
        addr = self.constant
        if self.base is not None:
            addr += register(self.base)
        if self.index is not None:
            addr += register(self.index) * self.scale
        if self.segment is not None:
            addr += register(f"{self.segment}_base")
        return addr & ((1 << self.address_bits) - 1)

    def fault(self, address: int) -> str | None:
        """The fault's detail when `address` (of the instruction at `rip`) is misaligned."""
        if address % 16 == 0:
            return None
        return (
            f"{GP_FAULT}: {self.text} needs a 16-byte aligned memory operand, "
            f"and {address:#x} is not"
        )


Gap = Unsupported | MustBeAligned


def gap_of(insn: Any) -> Gap | None:
    """What the machine must do about capstone instruction `insn` (detail mode), if anything."""
    text = f"{insn.mnemonic} {insn.op_str}".strip()
    if _is_vex_encoded(bytes(insn.bytes)):
        return Unsupported(
            f"{text}: a VEX/EVEX-encoded (AVX) instruction; the emulator computes these "
            "wrongly, and the machine's CPU model announces no AVX"
        )
    if insn.mnemonic in _X87_TRANSCENDENTAL:
        return Unsupported(
            f"{text}: the emulator computes x87 transcendental functions in double "
            "precision, the CPU in 64-bit extended precision"
        )
    for op in insn.operands:
        if op.type != x86.X86_OP_MEM:
            continue
        needs_alignment = insn.mnemonic in _ALIGNED_STATE or (
            op.size == 16
            and insn.mnemonic not in UNALIGNED_OK
            and x86.X86_GRP_FPU not in insn.groups
        )
        if needs_alignment:
            return _aligned_operand(insn, op, text)
    return None


def _aligned_operand(insn: Any, op: Any, text: str) -> MustBeAligned:
    base = insn.reg_name(op.mem.base) if op.mem.base else None
    constant = op.mem.disp
    if base in ("rip", "eip"):  # relative to the next instruction
        constant += insn.address + insn.size
        base = None
    segment = insn.reg_name(op.mem.segment) if op.mem.segment else None
    return MustBeAligned(
        text=text,
        constant=constant & ((1 << 64) - 1),
        base=base,
        index=insn.reg_name(op.mem.index) if op.mem.index else None,
        scale=op.mem.scale,
        segment=segment if segment in ("fs", "gs") else None,
        address_bits=8 * insn.addr_size,
    )


def _is_vex_encoded(code: bytes) -> bool:
    """VEX (c4, c5), EVEX (62) or XOP (8f with a map select of 8 or more) after the
    legacy prefixes. In 64-bit mode c4, c5 and 62 are no other instruction."""
    i = 0
    while i < len(code) and code[i] in _LEGACY_PREFIXES:
        i += 1
    if i >= len(code):
        return False
    if code[i] in (0xC4, 0xC5, 0x62):
        return True
    return code[i] == 0x8F and i + 1 < len(code) and code[i + 1] & 0x1F >= 8
