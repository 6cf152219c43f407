"""Facts about each code address: text, kind, bytes, `label+offset`, source line (capstone).

Executed addresses repeat millions of times, so each address is decoded once
and the trace stores, per row, indices into growing tables of unique values
(Arrow dictionary columns). The trace reader borrows this module to derive
the same facts for version 1 traces, which did not store them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from capstone import (
    CS_ARCH_X86,
    CS_GRP_BRANCH_RELATIVE,
    CS_GRP_CALL,
    CS_GRP_JUMP,
    CS_GRP_RET,
    CS_MODE_64,
    CS_OPT_SYNTAX_ATT,
    Cs,
    CsInsn,
)
from capstone import x86 as cs_x86

from .symbols import LabelTable
from .trace.arrays import binaries, numeric, numpy_of, strings, taken_binaries, with_nulls
from .trace.format import INSTRUCTION_KINDS

#: What `source_line` looks like: (file, line) of an address, or None.
SourceLookup = Callable[[int], "tuple[str, int] | None"]
#: An Instruction's fields as a tuple: (text, size, kind, bytes).
InstructionFact = tuple[str, int, str, bytes]
#: `Disassembler.decode` of many addresses of the program's own code at once, in
#: their order (the C core's, record/core/native_capstone.py).
DecodeMany = Callable[["npt.NDArray[np.uint64]"], "list[InstructionFact]"]
#: `Disassembler.decode(addr, code)` of code that ran elsewhere (the C core's too).
DecodeCode = Callable[[int, bytes], InstructionFact]


@dataclass(frozen=True)
class Instruction:
    text: str  # AT&T, as capstone prints it
    size: int
    kind: str  # one of INSTRUCTION_KINDS
    data: bytes  # the instruction's bytes (one byte for "(bad)", none outside the code)


def instruction_kind(insn: CsInsn) -> str:
    """call, ret, jmp, indirect-jmp, syscall or other, from capstone's groups and operands.

    Conditional jumps are `jmp`; `loop`/`loopne` are only in the relative-branch
    group, not the jump group, and count as jumps too. A jump whose target is
    a register or memory operand is `indirect-jmp`; an indirect call is still
    a `call`. `int 0x80` and `iretq` are `other`: only `syscall` (and
    `sysenter`) enter the kernel the recorder emulates.
    """
    if insn.id in (cs_x86.X86_INS_SYSCALL, cs_x86.X86_INS_SYSENTER):
        return "syscall"
    groups = set(insn.groups)
    if CS_GRP_CALL in groups:
        return "call"
    if CS_GRP_RET in groups:
        return "ret"
    if CS_GRP_JUMP in groups or CS_GRP_BRANCH_RELATIVE in groups:
        indirect = any(op.type in (cs_x86.X86_OP_REG, cs_x86.X86_OP_MEM) for op in insn.operands)
        return "indirect-jmp" if indirect else "jmp"
    return "other"


#: Mnemonic words (AT&T, prefixes such as `notrack` or `repz` are words of their
#: own) that start every instruction whose kind is not "other": calls, returns,
#: jumps, `loop`, `xbegin`, `syscall`... Only these need capstone's detail mode;
#: tests/test_disassembly_kinds.py sweeps a static binary to hold this.
MAY_BRANCH = (
    "j", "call", "ret", "loop", "lcall", "ljmp", "lret", "sys", "iret", "xbegin", "xabort",
    "int", "enter", "leave", "bnd", "notrack",
)  # fmt: skip


def may_branch(mnemonic: str) -> bool:
    """Whether an instruction with this mnemonic can be of a kind other than "other"."""
    return any(word.startswith(MAY_BRANCH) for word in mnemonic.split())


class Disassembler:
    def __init__(self, code: bytes, base: int, symbols: dict[str, int]) -> None:
        self._segments = [(base, code)]
        # Text and length of each instruction come from the lighter decode
        # (`disasm_lite`, no detail: about half the time per distinct address);
        # the detailed one gives groups and operands for `kind`, only where the
        # mnemonic may branch.
        self._lite = Cs(CS_ARCH_X86, CS_MODE_64)
        self._lite.syntax = CS_OPT_SYNTAX_ATT
        self._cs = Cs(CS_ARCH_X86, CS_MODE_64)
        self._cs.syntax = CS_OPT_SYNTAX_ATT
        self._cs.detail = True  # groups and operands, for `kind`
        self._labels = LabelTable(symbols)
        self._cache: dict[int | tuple[int, bytes], Instruction] = {}

    @classmethod
    def of_segments(
        cls, segments: list[tuple[int, bytes]], symbols: dict[str, int]
    ) -> Disassembler:
        """Code in several pieces (a program's executable segments)."""
        disassembler = cls(b"", 0, symbols)
        disassembler._segments = sorted(segments)
        return disassembler

    @property
    def segments(self) -> list[tuple[int, bytes]]:
        """(base, bytes) of each piece of the program's code, by address."""
        return self._segments

    def _bytes_at(self, addr: int) -> bytes:
        """Up to 16 bytes of code from `addr`; empty outside the code."""
        for base, code in self._segments:
            if base <= addr < base + len(code):
                return code[addr - base : addr - base + 16]
        return b""

    def decode(self, addr: int, code: bytes | None = None) -> Instruction:
        """The instruction at `addr`: from the program's code, or from `code`, the
        bytes that ran there when they were not the program's (record/machine/machine.py)."""
        key = addr if code is None else (addr, code)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        found = Instruction("(bad)", 1, "other", b"")
        if code is None:
            code = self._bytes_at(addr)
        if code:
            found = Instruction("(bad)", 1, "other", code[:1])
            for _addr, size, mnemonic, op_str in self._lite.disasm_lite(code, addr, 1):
                kind = "other"
                if may_branch(mnemonic):
                    kind = next(
                        (instruction_kind(insn) for insn in self._cs.disasm(code, addr, 1)), kind
                    )
                found = Instruction(f"{mnemonic} {op_str}".strip(), size, kind, code[:size])
        self._cache[key] = found
        return found

    def instruction(self, addr: int) -> tuple[str, int]:
        """(AT&T text, length) of the instruction at `addr`."""
        insn = self.decode(addr)
        return insn.text, insn.size

    def text(self, addr: int) -> str:
        return self.decode(addr).text

    def label(self, addr: int) -> tuple[str, int] | None:
        """(nearest label at or below, offset from it), or None below every label."""
        return self._labels.nearest(addr)

    def labels(self, addrs: list[int]) -> list[tuple[str, int] | None]:
        """`label` of each address, in one search."""
        return self._labels.nearest_many(addrs)

    def symbol(self, addr: int) -> str:
        """`label+offset` (offset in decimal, also when 0), or hex below every label."""
        nearest = self.label(addr)
        if nearest is None:
            return f"{addr:#x}"
        name, offset = nearest
        return f"{name}+{offset}"


class _Interned:
    """Distinct strings in first-seen order, each with its index."""

    def __init__(self, initial: tuple[str, ...] = ()) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}
        self._array: pa.Array | None = None  # `values` as Arrow, rebuilt when they grow
        for value in initial:
            self.add(value)

    def add(self, value: str) -> int:
        position = self._index.get(value)
        if position is None:
            position = self._index[value] = len(self.values)
            self.values.append(value)
            self._array = None
        return position

    def add_many(self, values: list[str | None]) -> list[int]:
        """`add` of each value in order; -1 for None."""
        index = self._index
        positions = [-1 if v is None else index.setdefault(v, len(index)) for v in values]
        if len(index) > len(self.values):  # `index` holds the values in first-seen order
            self.values.extend(itertools.islice(index, len(self.values), None))
            self._array = None
        return positions

    def dictionary(self, indices: npt.NDArray[np.int32]) -> pa.DictionaryArray:
        """A dictionary column over all values so far; a negative index is a null."""
        if self._array is None:
            self._array = strings(self.values)
        keys = with_nulls(indices, pa.int32(), indices < 0)
        return pa.DictionaryArray.from_arrays(keys, self._array)


#: Columns of InstructionTable's per-address facts: indices into the interned
#: tables (-1: null), the index of the instruction's bytes, the label offset.
_TEXT, _SYMBOL, _KIND, _LABEL, _SOURCE, _BYTES, _OFFSET = range(7)


#: The distinct values of a uint64 array and, per value, its index among them.
Distinct = Callable[[npt.NDArray[np.uint64]], tuple[npt.NDArray[np.uint64], npt.NDArray[Any]]]


def distinct_by_arrow(
    values: npt.NDArray[np.uint64],
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[Any]]:
    """`Distinct` by Arrow's hash (imports pyarrow.compute, 0.05 CPU s, at the first call)."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(numeric(values, pa.uint64()))
    return numpy_of(encoded.dictionary), numpy_of(encoded.indices)


class InstructionTable:
    """Maps executed addresses to the per-instruction columns of a trace.

    Each distinct value is stored once (`retq` at five addresses is one
    dictionary entry). A dictionary with repeated values made Arrow's Parquet
    writer encode the column differently from one file to the next in the
    same process, which broke byte-identical traces. The dictionaries only
    grow (new addresses of a row group are added in address order), so every
    row group can carry them as they stand and stay deterministic. `kind`'s
    dictionary is fixed: all six kinds, in the documented order.
    """

    def __init__(
        self,
        disassembler: Disassembler,
        source_line: SourceLookup,
        decode_many: DecodeMany | None = None,
        decode_code: DecodeCode | None = None,
    ) -> None:
        self._disassembler = disassembler
        self._source_line = source_line
        #: `disassembler.decode` of many addresses of the program's code at once, if given.
        self._decode_many = decode_many
        #: `disassembler.decode(addr, code)` of code that did not run from the program's.
        self._decode_code = decode_code
        #: address (or address and the bytes that ran there) -> row of _facts
        self._row_of: dict[int | tuple[int, bytes], int] = {}
        self._facts = np.zeros((0, 7), dtype=np.int64)
        self.texts = _Interned()
        self.symbols = _Interned()
        self.kinds = _Interned(INSTRUCTION_KINDS)
        self.labels = _Interned()
        self.sources = _Interned()
        self._bytes: list[bytes] = []
        self._bytes_array: pa.Array | None = None

    def _decoded(self, keys: list[int | tuple[int, bytes]]) -> list[InstructionFact]:
        """The instruction of each key: `decode_many` for the program's code (in one
        call), `decode_code` (else the disassembler) for code that ran elsewhere or
        was rewritten."""
        if self._decode_many is None:
            return [self._fact(key) for key in keys]
        plain = [key for key in keys if not isinstance(key, tuple)]
        many = iter(self._decode_many(np.array(plain, dtype=np.uint64)) if plain else [])
        elsewhere = self._decode_code or (lambda addr, code: self._fact((addr, code)))
        return [elsewhere(*key) if isinstance(key, tuple) else next(many) for key in keys]

    def _fact(self, key: int | tuple[int, bytes]) -> InstructionFact:
        addr, code = key if isinstance(key, tuple) else (key, None)
        insn = self._disassembler.decode(addr, code)
        return insn.text, insn.size, insn.kind, insn.data

    def _learn(self, keys: list[int | tuple[int, bytes]]) -> npt.NDArray[np.int64]:
        """Rows of _facts for new keys, in order (each table interns in that order)."""
        learned = np.zeros((len(keys), 7), dtype=np.int64)
        if not keys:
            return learned
        addrs = [key[0] if isinstance(key, tuple) else key for key in keys]
        facts = self._decoded(keys)
        labels = self._disassembler.labels(addrs)
        source_line = self._source_line
        many = getattr(source_line, "many", None)  # the recorder's LineUse asks in one go
        sources = many(addrs) if many is not None else [source_line(addr) for addr in addrs]
        first_row = len(self._row_of)
        self._row_of.update(zip(keys, range(first_row, first_row + len(keys)), strict=True))
        learned[:, _BYTES] = np.arange(len(self._bytes), len(self._bytes) + len(keys))
        self._bytes.extend(fact[3] for fact in facts)
        self._bytes_array = None
        learned[:, _TEXT] = self.texts.add_many([fact[0] for fact in facts])
        learned[:, _SYMBOL] = self.symbols.add_many(
            [
                f"{addr:#x}" if label is None else f"{label[0]}+{label[1]}"
                for addr, label in zip(addrs, labels, strict=True)
            ]
        )
        learned[:, _KIND] = self.kinds.add_many([fact[2] for fact in facts])
        learned[:, _LABEL] = self.labels.add_many([None if lb is None else lb[0] for lb in labels])
        learned[:, _SOURCE] = self.sources.add_many(
            [None if line is None else f"{line[0]}:{line[1]}" for line in sources]
        )
        learned[:, _OFFSET] = [0 if label is None else label[1] for label in labels]
        return learned

    def columns(
        self,
        rips: npt.NDArray[np.uint64],
        code: dict[int, bytes] | None = None,
        find_distinct: Distinct | None = None,
    ) -> dict[str, pa.Array]:
        """`insn`, `symbol`, `kind`, `label`, `offset`, `insn_bytes`, `source` for each
        rip; `code`: the bytes that ran at addresses whose code is not the program's
        as loaded (written or mapped at run time), decoded instead. `find_distinct`:
        how to find the distinct rips (the recorder passes the C core's)."""
        # Distinct rips by hashing, not sorting (np.unique was a quarter of a
        # scenario chunk's conversion); new ones are still learned in address
        # order, which keeps the dictionaries, and so the file, deterministic
        # whatever order `find_distinct` gives them in.
        unique, inverse = (find_distinct or distinct_by_arrow)(rips)
        keys: list[int | tuple[int, bytes]] = list(unique.tolist())
        if code:
            keys = [(addr, code[addr]) if addr in code else addr for addr in unique.tolist()]
        in_order = [keys[i] for i in np.argsort(unique).tolist()]
        learned = self._learn([key for key in in_order if key not in self._row_of])
        if len(learned):
            self._facts = np.concatenate([self._facts, learned])
        rows = np.array([self._row_of[key] for key in keys], dtype=np.int64)
        # The facts of the chunk's distinct rips (a few dozen rows), each column
        # gathered per row on its own: one contiguous int32 take per column, where
        # gathering all seven int64 facts per row and then slicing each column out
        # of that copy was half of a scenario chunk's conversion.
        distinct = self._facts[rows]
        index = {
            fact: np.ascontiguousarray(distinct[:, fact], dtype=np.int32)[inverse]
            for fact in (_TEXT, _SYMBOL, _KIND, _LABEL, _SOURCE, _BYTES)
        }
        no_label = index[_LABEL] < 0
        if self._bytes_array is None:
            self._bytes_array = binaries(self._bytes)
        return {
            "insn": self.texts.dictionary(index[_TEXT]),
            "symbol": self.symbols.dictionary(index[_SYMBOL]),
            "kind": self.kinds.dictionary(index[_KIND]),
            "label": self.labels.dictionary(index[_LABEL]),
            "offset": with_nulls(distinct[:, _OFFSET][inverse], pa.int64(), no_label),
            "insn_bytes": taken_binaries(self._bytes_array, index[_BYTES]),
            "source": self.sources.dictionary(index[_SOURCE]),
        }
