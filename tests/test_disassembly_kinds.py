"""The instruction facts of a trace (`insn`, `kind`, `insn_bytes`) come from a light
decode plus a detailed one only where the mnemonic may branch (disassembly.py).
Checked here against capstone's detailed decode of a static C program's code
(libc included), every instruction and bytes in the middle of instructions: an
instruction whose kind is not "other" but whose mnemonic the shortcut skips would
show as a different `kind` (leaving `xbegin` out of the list fails here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs
from elftools.elf.elffile import ELFFile

from stacktrace_lab.disassembly import Disassembler, Instruction, instruction_kind
from stacktrace_lab.examples import build_example, compiler_missing


def detailed(cs: Cs, code: bytes, addr: int) -> Instruction:
    """The facts as the detailed decode alone gives them (the decode before the shortcut)."""
    found = Instruction("(bad)", 1, "other", code[:1])
    for insn in cs.disasm(code, addr, 1):
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        found = Instruction(text, insn.size, instruction_kind(insn), bytes(insn.bytes))
    return found


def test_facts_match_the_detailed_decode(tmp_path: Path) -> None:
    why = compiler_missing("c-static")
    if why is not None:
        pytest.skip(why)
    program = build_example("c-static", tmp_path / "bin")
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    cs.syntax = CS_OPT_SYNTAX_ATT
    cs.detail = True
    kinds: set[str] = set()
    compared = 0
    with program.open("rb") as file:
        for section in ELFFile(file).iter_sections():
            if not section["sh_flags"] & 0x4:  # SHF_EXECINSTR
                continue
            code, base = section.data(), section["sh_addr"]
            fast = Disassembler(code, base, {})
            # Every instruction of a linear sweep (the real ones, rare mnemonics
            # included) and every 7th byte offset (bytes inside instructions).
            starts, offset = set(range(0, len(code), 7)), 0
            while offset < len(code):
                starts.add(offset)
                offset += detailed(cs, code[offset : offset + 16], base + offset).size
            for offset in sorted(starts):
                want = detailed(cs, code[offset : offset + 16], base + offset)
                assert fast.decode(base + offset) == want, f"at {base + offset:#x}"
                kinds.add(want.kind)
                compared += 1
    # The sweep saw every kind, so the comparison covered the branches too.
    assert kinds == {"call", "ret", "jmp", "indirect-jmp", "syscall", "other"}
    assert compared > 50_000
