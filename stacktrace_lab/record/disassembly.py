"""Instruction text and `label+offset` names for code addresses (capstone).

Executed addresses repeat millions of times, so each address is decoded once
and the trace stores an index into a growing table of unique instructions.
"""

from __future__ import annotations

import bisect

import numpy as np
import numpy.typing as npt
from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs

from ..symbols import LabelTable


class Disassembler:
    def __init__(self, code: bytes, base: int, symbols: dict[str, int]) -> None:
        self._segments = [(base, code)]
        self._cs = Cs(CS_ARCH_X86, CS_MODE_64)
        self._cs.syntax = CS_OPT_SYNTAX_ATT
        self._labels = LabelTable(symbols)
        self._cache: dict[int, tuple[str, int]] = {}

    @classmethod
    def of_segments(
        cls, segments: list[tuple[int, bytes]], symbols: dict[str, int]
    ) -> Disassembler:
        """Code in several pieces (a program's executable segments)."""
        disassembler = cls(b"", 0, symbols)
        disassembler._segments = sorted(segments)
        return disassembler

    def _bytes_at(self, addr: int) -> bytes:
        i = bisect.bisect_right([base for base, _ in self._segments], addr) - 1
        if i < 0:
            return b""
        base, code = self._segments[i]
        offset = addr - base
        return code[offset : offset + 16] if 0 <= offset < len(code) else b""

    def instruction(self, addr: int) -> tuple[str, int]:
        """(AT&T text, length) of the instruction at `addr`."""
        cached = self._cache.get(addr)
        if cached is not None:
            return cached
        text, size = "(bad)", 1
        for insn in self._cs.disasm(self._bytes_at(addr), addr, 1):
            text = f"{insn.mnemonic} {insn.op_str}".strip()
            size = insn.size
        self._cache[addr] = (text, size)
        return text, size

    def text(self, addr: int) -> str:
        return self.instruction(addr)[0]

    def symbol(self, addr: int) -> str:
        """`label+offset` (offset in decimal, also when 0), or hex below every label."""
        nearest = self._labels.nearest(addr)
        if nearest is None:
            return f"{addr:#x}"
        name, offset = nearest
        return f"{name}+{offset}"


class InstructionTable:
    """Maps executed addresses to indices into dictionaries of unique strings.

    `texts` holds each distinct instruction text once (`retq` at five
    addresses is one entry) and `symbols` each distinct `label+offset`. A
    dictionary with repeated values made Arrow's Parquet writer encode the
    column differently from one file to the next in the same process, which
    broke byte-identical traces. The dictionaries only grow (new addresses of
    a row group are added in address order), so every row group can carry
    them as they stand and stay deterministic.
    """

    def __init__(self, disassembler: Disassembler) -> None:
        self._disassembler = disassembler
        self._by_address: dict[int, tuple[int, int]] = {}
        self.texts: list[str] = []
        self.symbols: list[str] = []
        self._text_index: dict[str, int] = {}
        self._symbol_index: dict[str, int] = {}

    def indices(
        self, rips: npt.NDArray[np.uint64]
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
        """(index into `texts`, index into `symbols`) for each rip."""
        unique, inverse = np.unique(rips, return_inverse=True)
        text_of = np.empty(len(unique), dtype=np.int32)
        symbol_of = np.empty(len(unique), dtype=np.int32)
        for i, addr in enumerate(unique.tolist()):
            known = self._by_address.get(addr)
            if known is None:
                known = (
                    _intern(self._disassembler.text(addr), self.texts, self._text_index),
                    _intern(self._disassembler.symbol(addr), self.symbols, self._symbol_index),
                )
                self._by_address[addr] = known
            text_of[i], symbol_of[i] = known
        inverse = inverse.reshape(-1)
        return text_of[inverse], symbol_of[inverse]


def _intern(value: str, values: list[str], index: dict[str, int]) -> int:
    position = index.get(value)
    if position is None:
        position = index[value] = len(values)
        values.append(value)
    return position
