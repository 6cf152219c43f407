"""The miscompile guard: every instruction decoded back must say what its line says.

Keystone has silently assembled wrong code (`[rbx + A + B]` as `[rbx + B]`,
`$32` as 0x32 once a radix leaked). After assembly, each instruction's bytes
are decoded with capstone in detail mode and compared, operand by operand,
with the operands the front end parsed from the source and evaluated with the
final label addresses: registers, immediates, branch targets, and memory
operands' segment, base, index, scale and displacement (for `sym(%rip)`, the
address it reaches). A difference is an error naming the line.

What is not compared, and why: the mnemonic (capstone spells `movabs`,
`retq`... its own way; a wrong opcode shows in the operands or the byte count
almost always), and instructions where capstone lists a different number of
operands than the source writes (`shl %rax` decodes as `shl rax, 1`, `rep
stosq` with its implicit operands): there the source's own operands are
compared against the matching leading ones only when the kinds line up.
`Check.unchecked` counts those, so a test can see the guard at work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from capstone import CS_ARCH_X86, CS_MODE_64, Cs, CsInsn
from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_OP_REG

from .operands import MASK64, Expr, Instruction, Operand, Unknown


@dataclass
class Check:
    checked: int = 0
    unchecked: int = 0


class Guard:
    def __init__(self, symbols: Mapping[str, int]) -> None:
        self.cs = Cs(CS_ARCH_X86, CS_MODE_64)
        self.cs.detail = True
        self.symbols = dict(symbols)
        self.stats = Check()

    def decode(self, code: bytes, address: int) -> list[CsInsn]:
        return list(self.cs.disasm(code, address))

    def mismatch(self, insn: Instruction, decoded: CsInsn) -> str | None:
        """What differs between the source's operands and the decoded ones, or None."""
        got = list(decoded.operands)
        want = insn.operands
        if len(got) != len(want):
            if want and len(got) > len(want) and _kinds_match(want, got[: len(want)]):
                got = got[: len(want)]
            else:
                self.stats.unchecked += 1
                return None
        self.stats.checked += 1
        for position, (w, g) in enumerate(zip(want, got, strict=True)):
            problem = self._operand(w, g, decoded)
            if problem:
                return f"operand {position + 1}: {problem}"
        return None

    def _value(self, expr: Expr, here: int) -> int:
        return expr.value({**self.symbols, ".": here})

    def value(self, expr: Expr, here: int) -> int | None:
        """The expression's value at address `here` (`.`), or None if it names an unknown."""
        return self._safe_value(expr, here)

    def _operand(self, want: Operand, got: object, decoded: CsInsn) -> str | None:
        kind = got.type  # type: ignore[attr-defined]
        here = decoded.address
        if want.kind == "reg":
            if kind != X86_OP_REG:
                return f"expected register {want.reg}"
            name = decoded.reg_name(got.reg)  # type: ignore[attr-defined]
            if _register(name) != _register(str(want.reg)):
                return f"expected register {want.reg}, assembled {name}"
            return None
        if want.kind in ("imm", "target"):
            if want.kind == "target" and want.expr is None:
                return None
            if kind != X86_OP_IMM:
                return "expected an immediate" if want.kind == "imm" else "expected a target"
            assert want.expr is not None
            value = self._safe_value(want.expr, here)
            if value is None:
                return None
            imm = got.imm  # type: ignore[attr-defined]
            bits = 8 * got.size  # type: ignore[attr-defined]
            same = (imm - value) & MASK64 == 0 or (bits < 64 and (imm - value) % (1 << bits) == 0)
            if not same:
                return f"expected {value:#x}, assembled {imm & MASK64:#x}"
            return None
        if kind != X86_OP_MEM:
            return "expected a memory operand"
        mem = got.mem  # type: ignore[attr-defined]
        segment = decoded.reg_name(mem.segment) if mem.segment else None
        base = decoded.reg_name(mem.base) if mem.base else None
        index = decoded.reg_name(mem.index) if mem.index else None
        if (want.segment or None) != segment:
            return f"expected segment {want.segment}, assembled {segment}"
        expected = 0 if want.expr is None else self._safe_value(want.expr, here)
        if want.base is None and want.index is None and base == "rip" and expected is not None:
            # Keystone writes some absolute operands RIP-relative: the same
            # address while the code stays where it was assembled (it does),
            # unless it forgot to subtract rip (`movq 0x20000000, %rax`).
            reached = (decoded.address + decoded.size + mem.disp) & MASK64
            if reached != expected & MASK64:
                return (
                    f"expected absolute address {expected & MASK64:#x}, assembled "
                    f"rip-relative to {reached:#x}"
                )
            return None
        if want.base != base:
            return f"expected base {want.base}, assembled {base}"
        if want.index != index:
            return f"expected index {want.index}, assembled {index}"
        if want.index and want.scale != mem.scale:
            return f"expected scale {want.scale}, assembled {mem.scale}"
        if expected is None:
            return None
        disp = mem.disp
        if want.rip_target:
            reached = (decoded.address + decoded.size + disp) & MASK64
            if reached != expected & MASK64:
                return f"expected {expected:#x} (rip-relative), assembled {reached:#x}"
        elif (disp - expected) & MASK64 and (disp - expected) & 0xFFFFFFFF:
            return f"expected displacement {expected:#x}, assembled {disp & MASK64:#x}"
        if want.size and got.size != want.size:  # type: ignore[attr-defined]
            return f"expected a {want.size}-byte operand, assembled {got.size}"  # type: ignore[attr-defined]
        return None

    def _safe_value(self, expr: Expr, here: int) -> int | None:
        try:
            return self._value(expr, here)
        except Unknown:
            return None


def _kinds_match(want: list[Operand], got: list[object]) -> bool:
    kinds = {"reg": X86_OP_REG, "imm": X86_OP_IMM, "target": X86_OP_IMM, "mem": X86_OP_MEM}
    return all(kinds[w.kind] == g.type for w, g in zip(want, got, strict=True))  # type: ignore[attr-defined]


def _register(name: str) -> str:
    name = name.lower().replace(" ", "")
    return "st(0)" if name == "st" else name
