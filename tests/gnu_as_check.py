"""Assemble a program with keystone and with GNU as, and compare instruction by instruction.

The text both get is what the front end hands keystone (`keystone_input`), one
item per line behind a label of its own; GNU as (`as`, then `ld` to place it
at the code base) gives each item's bytes through those labels (`nm`).

Equal bytes are the common case. Where they differ, the two assemblers picked
different encodings of one instruction (keystone writes `mov $5, %rax` as the
10-byte movabs, GNU as as the 7-byte sign-extended mov; GNU as shortens jumps
it can), and then everything after moves, so the comparison falls back to
what the instruction means: mnemonic (movabs read as mov) and operands, with
every address written as "item N + offset" so that moved code still compares
equal.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from capstone import CS_ARCH_X86, CS_MODE_64, Cs, CsInsn
from capstone.x86 import X86_OP_IMM, X86_OP_MEM, X86_OP_REG

from stacktrace_lab.layout import CODE_BASE
from stacktrace_lab.record.asm.assembler import KeystoneInput
from stacktrace_lab.record.asm.keystone_worker import KeystoneWorker

TOOLS = ("as", "ld", "nm", "objcopy")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]


@dataclass(frozen=True)
class Assembled:
    code: bytes
    #: Address of each item, and one past the last.
    starts: list[int]

    def item(self, index: int) -> bytes:
        return self.code[self.starts[index] - CODE_BASE : self.starts[index + 1] - CODE_BASE]

    def where(self, address: int) -> tuple[int, int]:
        """(item, offset) of an address: the last item starting at or below it."""
        best = 0
        for index, start in enumerate(self.starts):
            if start <= address:
                best = index
        return best, address - self.starts[best]


def with_keystone(given: KeystoneInput) -> Assembled:
    trailer = [".intel_syntax noprefix"] + [f"movabs rax, {m}" for m in given.marks]
    with KeystoneWorker() as worker:
        code, error = worker.assemble("\n".join([*given.lines, *trailer]), CODE_BASE)
    assert code is not None, error
    body = code[: len(code) - 10 * len(given.marks)]
    starts = [
        int.from_bytes(code[len(body) + 10 * i + 2 : len(body) + 10 * i + 10], "little")
        for i in range(len(given.marks))
    ]
    return Assembled(body, starts)


def with_gnu_as(given: KeystoneInput, workdir: Path) -> Assembled:
    """The same text through GNU as; the marks become global symbols for nm."""
    visible = [line.replace(".Lstacktrace_lab_line_", "stl_line_") for line in given.lines]
    source = workdir / "program.s"
    source.write_text("\n".join([".text", *visible]) + "\n")
    program = str(workdir / "program")
    _run("as", "--64", "-o", f"{program}.o", str(source))
    _run("ld", f"-Ttext={CODE_BASE:#x}", "-e", "stl_line_0", "-o", program, f"{program}.o")
    names = _run("nm", "--defined-only", program)
    addresses = {}
    for line in names.splitlines():
        address, _, name = line.split(maxsplit=2)
        if name.startswith("stl_line_"):
            addresses[int(name.removeprefix("stl_line_"))] = int(address, 16)
    _run("objcopy", "-O", "binary", "--only-section=.text", program, f"{program}.bin")
    starts = [addresses[i] for i in range(len(given.marks))]
    return Assembled((workdir / "program.bin").read_bytes(), starts)


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, f"{command[0]} failed: {done.stderr.strip()}"
    return done.stdout


def differences(given: KeystoneInput, ks: Assembled, gas: Assembled) -> list[str]:
    """'file:line: ...' for every instruction whose meaning differs; [] if none."""
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    cs.detail = True
    found = []
    for index, item in enumerate(given.items):
        if item.statement is None or item.statement.kind != "insn":
            continue
        a, b = ks.item(index), gas.item(index)
        if a == b:
            continue
        left = list(cs.disasm(a, ks.starts[index]))
        right = list(cs.disasm(b, gas.starts[index]))
        if _meaning(left, ks) != _meaning(right, gas):
            origin = item.statement.origin
            found.append(
                f"{origin.file}:{origin.line}: keystone {a.hex()} "
                f"{[f'{i.mnemonic} {i.op_str}' for i in left]}, GNU as {b.hex()} "
                f"{[f'{i.mnemonic} {i.op_str}' for i in right]}"
            )
    return found


def _meaning(instructions: list[CsInsn], where: Assembled) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for insn in instructions:
        operands: list[object] = []
        for op in insn.operands:
            if op.type == X86_OP_REG:
                operands.append(("reg", insn.reg_name(op.reg)))
            elif op.type == X86_OP_IMM:
                operands.append(("imm", _address(op.imm, where)))
            elif op.type == X86_OP_MEM:
                mem = op.mem
                disp = mem.disp
                base = insn.reg_name(mem.base) if mem.base else None
                target: object = disp
                if base == "rip":
                    target = _address(insn.address + insn.size + disp, where)
                elif base is None and mem.index == 0:
                    target = _address(disp, where)
                operands.append(
                    (
                        "mem",
                        insn.reg_name(mem.segment) if mem.segment else None,
                        base,
                        insn.reg_name(mem.index) if mem.index else None,
                        mem.scale,
                        target,
                        op.size,
                    )
                )
        mnemonic = "mov" if insn.mnemonic == "movabs" else insn.mnemonic
        out.append((mnemonic, tuple(operands)))
    return out


def _address(value: int, where: Assembled) -> object:
    """An address inside the program as (item, offset); any other value as is."""
    value &= (1 << 64) - 1
    if where.starts[0] <= value <= where.starts[-1]:
        return ("at", *where.where(value))
    return value
