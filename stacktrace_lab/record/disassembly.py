"""Instruction text and `label+offset` names for code addresses (capstone).

Executed addresses repeat millions of times, so each address is decoded once
and the trace stores an index into a growing table of unique instructions.
"""

from __future__ import annotations

import bisect

import numpy as np
import numpy.typing as npt
from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs


def symbolize(addr: int, symbols: dict[str, int]) -> str:
    """`label+offset` of the nearest label at or below `addr`, or hex if none."""
    table = sorted((a, n) for n, a in symbols.items())
    return _symbolize_sorted(addr, table)


def _symbolize_sorted(addr: int, table: list[tuple[int, str]]) -> str:
    i = bisect.bisect_right(table, (addr, "\uffff")) - 1
    if i < 0:
        return f"{addr:#x}"
    base, name = table[i]
    return f"{name}+{addr - base}"


class Disassembler:
    def __init__(self, code: bytes, base: int, symbols: dict[str, int]) -> None:
        self.code = code
        self.base = base
        self._cs = Cs(CS_ARCH_X86, CS_MODE_64)
        self._cs.syntax = CS_OPT_SYNTAX_ATT
        # Several labels at one address: the first in source order names it.
        first: dict[int, str] = {}
        for name, addr in symbols.items():
            first.setdefault(addr, name)
        self._symbols = sorted((a, n) for a, n in first.items())
        self._cache: dict[int, tuple[str, int]] = {}

    def instruction(self, addr: int) -> tuple[str, int]:
        """(AT&T text, length) of the instruction at `addr`."""
        cached = self._cache.get(addr)
        if cached is not None:
            return cached
        offset = addr - self.base
        text, size = "(bad)", 1
        if 0 <= offset < len(self.code):
            for insn in self._cs.disasm(self.code[offset : offset + 16], addr, 1):
                text = f"{insn.mnemonic} {insn.op_str}".strip()
                size = insn.size
        self._cache[addr] = (text, size)
        return text, size

    def text(self, addr: int) -> str:
        return self.instruction(addr)[0]

    def symbol(self, addr: int) -> str:
        return _symbolize_sorted(addr, self._symbols)


class InstructionTable:
    """Maps executed addresses to indices of a dictionary of unique instructions.

    The dictionary only grows (new addresses of a row group are added in address
    order), so every row group
    of a trace can carry the dictionary as it stands and stay deterministic.
    """

    def __init__(self, disassembler: Disassembler) -> None:
        self._disassembler = disassembler
        self._index: dict[int, int] = {}
        self.addresses: list[int] = []
        self.texts: list[str] = []
        self.symbols: list[str] = []

    def indices(self, rips: npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
        unique, inverse = np.unique(rips, return_inverse=True)
        lookup = np.empty(len(unique), dtype=np.int32)
        for i, addr in enumerate(unique.tolist()):
            index = self._index.get(addr)
            if index is None:
                index = len(self.addresses)
                self._index[addr] = index
                self.addresses.append(addr)
                self.texts.append(self._disassembler.text(addr))
                self.symbols.append(self._disassembler.symbol(addr))
            lookup[i] = index
        return lookup[inverse.reshape(-1)]
