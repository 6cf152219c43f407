"""capstone's C library for the C core: `_core.Capstone`.

The per-address work of a compiled program's first executions (the user-mode
decision, record/machine/user_mode.py, and the instruction facts of the trace,
disassembly.py) cost more through capstone's Python binding than everything
else a step does. `_core.c` calls the library the `capstone` package already
loaded instead, as it does unicorn's: the entry points' addresses come from
the binding's CDLL, and the offsets of the cs_insn and cs_detail fields it
reads from the binding's own ctypes structures (so no capstone header is
needed, and the layout is the one of the library that is loaded).

What the C side does is the Python code's rule, on the same bytes:
`Capstone.facts` is `Disassembler.decode` over the program's code, and the
core asks Python's `Decisions.decide` for every instruction that may be
privileged, fixed-value or an emulator gap (the ids in
`user_mode.IDS_DECIDED_IN_PYTHON`, the privilege group, x87 and VEX/EVEX/XOP
encodings, a 16-byte memory operand of a mnemonic not in
`emulator_gaps.UNALIGNED_OK`), deciding only the rest, NORMAL, itself.
tests/test_native_core.py checks that traces stay byte-identical to the pure
Python recorder's.
"""

from __future__ import annotations

import ctypes
from typing import Any

import capstone
import numpy as np
import numpy.typing as npt
from capstone import (
    CS_ARCH_X86,
    CS_GRP_BRANCH_RELATIVE,
    CS_GRP_CALL,
    CS_GRP_JUMP,
    CS_GRP_RET,
    CS_MODE_64,
    CS_OPT_SYNTAX_ATT,
    Cs,
)
from capstone import x86 as cs_x86

from ...disassembly import MAY_BRANCH, InstructionFact
from ...trace.format import INSTRUCTION_KINDS
from ..machine.emulator_gaps import UNALIGNED_OK
from ..machine.user_mode import IDS_DECIDED_IN_PYTHON


def _address(function: Any) -> int:
    return int(ctypes.cast(function, ctypes.c_void_p).value or 0)


def _offset(structure: Any, field: str) -> int:
    return int(getattr(structure, field).offset)


def native_capstone(module: Any) -> Any | None:
    """A `_core.Capstone` with a handle of its own (AT&T syntax, detail on, as the
    Python side decodes), or None where the extension has none or the library
    lacks an entry point."""
    if module is None or not hasattr(module, "Capstone"):
        return None
    try:
        library = capstone._cs
        functions = tuple(
            _address(getattr(library, name)) for name in ("cs_malloc", "cs_disasm_iter", "cs_free")
        )
    except AttributeError:
        return None
    handle = Cs(CS_ARCH_X86, CS_MODE_64)
    handle.syntax = CS_OPT_SYNTAX_ATT  # as the trace's `insn` column spells instructions
    handle.detail = True  # before cs_malloc: the instruction gets room for its detail
    insn, detail = capstone._cs_insn, capstone._cs_detail
    arch = _offset(detail, "arch")
    x86_detail, operand = cs_x86.CsX86, cs_x86.X86Op
    layout = (
        _offset(insn, "id"),
        _offset(insn, "size"),
        _offset(insn, "mnemonic"),
        _offset(insn, "op_str"),
        _offset(insn, "detail"),
        _offset(detail, "groups"),
        _offset(detail, "groups_count"),
        arch + _offset(x86_detail, "op_count"),
        arch + _offset(x86_detail, "operands"),
        ctypes.sizeof(operand),
        _offset(operand, "type"),
        _offset(operand, "size"),
    )
    constants = (
        cs_x86.X86_INS_SYSCALL,
        cs_x86.X86_INS_SYSENTER,
        CS_GRP_JUMP,
        CS_GRP_CALL,
        CS_GRP_RET,
        CS_GRP_BRANCH_RELATIVE,
        cs_x86.X86_GRP_PRIVILEGE,
        cs_x86.X86_OP_REG,
        cs_x86.X86_OP_MEM,
    )
    return module.Capstone(
        handle,
        handle.csh.value,
        functions,
        layout,
        constants,
        sorted(IDS_DECIDED_IN_PYTHON),
        MAY_BRANCH,
        sorted(UNALIGNED_OK),
        INSTRUCTION_KINDS,
    )


class NativeFacts:
    """`Disassembler.decode` of many addresses of the program's code in one call
    (InstructionTable's `decode_many`)."""

    def __init__(self, capstone_core: Any, segments: list[tuple[int, bytes]]) -> None:
        self._capstone = capstone_core
        self._segments = sorted(segments)

    def __call__(self, addresses: npt.NDArray[np.uint64]) -> list[InstructionFact]:
        facts: list[InstructionFact] = self._capstone.facts(
            np.ascontiguousarray(addresses, dtype=np.uint64).tobytes(), self._segments
        )
        return facts

    def of_code(self, address: int, code: bytes) -> InstructionFact:
        """`Disassembler.decode(address, code)`: code that ran elsewhere (a library's,
        a JIT's) or was rewritten, from the bytes that ran there. One call each:
        each instruction is decoded from its own bytes only."""
        fact: InstructionFact = self._capstone.facts(
            address.to_bytes(8, "little"), [(address, code)]
        )[0]
        return fact
