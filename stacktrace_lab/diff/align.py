"""Align mode: pair the rows of two traces by what runs, not by step number or address.

An instruction inserted before the switch shifts every later step number, and
every later code address by its length. Align mode therefore:

1. gives each row a key that does not move when code is inserted: the label of
   its `symbol` (`main` of `main+8`: the offset shifts inside the function that
   grew) and its instruction text with code addresses replaced by their label
   and rip-relative displacements dropped (`callq 0x40003a` -> `callq <gt_switch>`);
2. pairs rows by those keys: the common prefix and suffix are found with two
   vectorized comparisons, and only the region between them goes through
   `difflib.SequenceMatcher` (at most `ALIGN_WINDOW` rows of each side: beyond
   that the rest of the region is reported as unaligned);
3. builds an `AddressMap` from the paired rows' `rip`s (and the labels both
   traces define): any 64-bit value of A that points into A's code is moved to
   the matching address in B before registers, memory accesses and stack words
   are compared, so a return address or function pointer into moved code
   compares equal.

Limits: a change of a branch target inside the same label keeps the key
(the difference shows as a `rip` difference at the next row); a value of A that
merely looks like a code address is translated too; a region of divergence
longer than the window is only aligned at its start.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from difflib import SequenceMatcher

import numpy as np
import numpy.typing as npt

from ..trace.format import TraceMetadata
from ..trace.reader import Trace
from .compare import U64, Segment
from .model import Gap

ALIGN_WINDOW = 4000

_HEX = re.compile(r"0x[0-9a-f]+")
_RIP_RELATIVE = re.compile(r"-?(?:0x[0-9a-f]+|\d+)\(%rip\)")


class CodeLabels:
    """The labels of one trace's code: which label an address falls under."""

    def __init__(self, meta: TraceMetadata) -> None:
        self.lo = meta.code_base
        self.hi = meta.code_base + len(meta.code)
        first: dict[int, str] = {}
        for name, addr in sorted(meta.symbols.items(), key=lambda item: item[1]):
            first.setdefault(addr, name)
        self._table = sorted(first.items())
        self._addrs = [addr for addr, _ in self._table]

    def contains(self, addr: int) -> bool:
        # `<=`: a call as the last instruction pushes the address just past the code.
        return self.lo <= addr <= self.hi

    def label(self, addr: int) -> str:
        i = bisect.bisect_right(self._addrs, addr) - 1
        return self._table[i][1] if i >= 0 else "code"

    def normalise(self, insn: str) -> str:
        """Instruction text with code addresses named by label, rip-relative offsets dropped."""
        insn = _RIP_RELATIVE.sub("<pc>(%rip)", insn)

        def name(match: re.Match[str]) -> str:
            value = int(match.group(0), 16)
            return f"<{self.label(value)}>" if self.contains(value) else match.group(0)

        return _HEX.sub(name, insn)


def label_of(symbol: str) -> str:
    """`main` of `main+8`; a symbol without a label (hex address) stays whole."""
    head, plus, _ = symbol.rpartition("+")
    return head if plus else symbol


class KeyTable:
    """Row keys of both traces in one id space: (label id << 32) | instruction id."""

    def __init__(self) -> None:
        self._labels: dict[str, int] = {}
        self._insns: dict[str, int] = {}

    def _id(self, table: dict[str, int], text: str) -> int:
        return table.setdefault(text, len(table))

    def keys(self, trace: Trace) -> npt.NDArray[np.int64]:
        labels = CodeLabels(trace.metadata)
        out = np.empty(trace.num_rows, dtype=np.int64)
        normalised: dict[str, int] = {}
        position = 0
        for group in trace.iter_row_groups(["symbol", "insn"]):
            symbol = group.column("symbol").combine_chunks()
            insn = group.column("insn").combine_chunks()
            # Dictionaries are small (one entry per distinct instruction): map them in
            # Python, then the per-row indices in one numpy take.
            label_ids = np.array(
                [self._id(self._labels, label_of(s)) for s in symbol.dictionary.to_pylist()],
                dtype=np.int64,
            )
            insn_ids = np.array(
                [
                    normalised.setdefault(t, self._id(self._insns, labels.normalise(t)))
                    for t in insn.dictionary.to_pylist()
                ],
                dtype=np.int64,
            )
            n = len(group)
            sym_idx = symbol.indices.to_numpy(zero_copy_only=False)
            insn_idx = insn.indices.to_numpy(zero_copy_only=False)
            out[position : position + n] = (label_ids[sym_idx] << 32) | insn_ids[insn_idx]
            position += n
        return out


@dataclass(frozen=True)
class Opcode:
    """One block of the alignment: `equal` rows pair up; the other kinds are gaps."""

    kind: str  # equal | inserted | deleted | replaced | unaligned
    a_start: int
    a_stop: int
    b_start: int
    b_stop: int


@dataclass(frozen=True)
class AlignmentPlan:
    opcodes: tuple[Opcode, ...]
    window_limited: bool

    def segments(self) -> list[Segment]:
        return [
            Segment(op.a_start, op.b_start, op.a_stop - op.a_start)
            for op in self.opcodes
            if op.kind == "equal"
        ]

    def gaps(self) -> list[Gap]:
        return [
            Gap(op.kind, op.a_start, op.a_stop, op.b_start, op.b_stop)
            for op in self.opcodes
            if op.kind != "equal"
        ]


_KIND = {"insert": "inserted", "delete": "deleted", "replace": "replaced", "equal": "equal"}


def align_traces(a: Trace, b: Trace, window: int = ALIGN_WINDOW) -> AlignmentPlan:
    table = KeyTable()
    keys_a, keys_b = table.keys(a), table.keys(b)
    len_a, len_b = len(keys_a), len(keys_b)
    n = min(len_a, len_b)
    prefix = _common_run(keys_a[:n], keys_b[:n])
    suffix = _common_run(keys_a[len_a - n + prefix :][::-1], keys_b[len_b - n + prefix :][::-1])
    mid_a = (prefix, len_a - suffix)
    mid_b = (prefix, len_b - suffix)

    opcodes: list[Opcode] = []
    if prefix:
        opcodes.append(Opcode("equal", 0, prefix, 0, prefix))
    limited = False
    wa = min(mid_a[1] - mid_a[0], window)
    wb = min(mid_b[1] - mid_b[0], window)
    if wa or wb:
        matcher = SequenceMatcher(
            None,
            keys_a[prefix : prefix + wa].tolist(),
            keys_b[prefix : prefix + wb].tolist(),
            autojunk=False,  # in a loop every key is "popular": junk would match nothing
        )
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            opcodes.append(Opcode(_KIND[tag], prefix + i1, prefix + i2, prefix + j1, prefix + j2))
    rest_a = (prefix + wa, mid_a[1])
    rest_b = (prefix + wb, mid_b[1])
    if rest_a[1] > rest_a[0] or rest_b[1] > rest_b[0]:
        limited = True
        opcodes.append(Opcode("unaligned", *rest_a, *rest_b))
    if suffix:
        opcodes.append(Opcode("equal", mid_a[1], len_a, mid_b[1], len_b))
    return AlignmentPlan(tuple(opcodes), limited)


def _common_run(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> int:
    """Length of the common leading run of two equally long key arrays."""
    differ = a != b
    return int(np.argmax(differ)) if differ.any() else len(a)


class AddressMap:
    """Moves code addresses of A onto the matching code addresses of B.

    Anchors are pairs (address in A, address in B) of the same instruction (from
    paired rows) or the same label. A code address of A moves by the distance of
    the nearest anchor at or below it; that is exact for executed instructions
    and for addresses just after one (a return address), and for anything else
    as good as "the code up to here moved by this much".
    """

    def __init__(self, labels_a: CodeLabels, anchors: dict[int, int]) -> None:
        self.lo, self.hi = labels_a.lo, labels_a.hi
        ordered = sorted(anchors.items())
        self._from = np.array([a for a, _ in ordered], dtype=np.uint64)
        # Signed distances, applied only to code addresses (far below 2**63).
        self._delta = np.array([b - a for a, b in ordered], dtype=np.int64)

    @classmethod
    def build(cls, a: Trace, b: Trace, plan: AlignmentPlan) -> AddressMap:
        anchors: dict[int, int] = {}
        for label, addr in b.metadata.symbols.items():
            if label in a.metadata.symbols:
                anchors[a.metadata.symbols[label]] = addr
        for segment in plan.segments():
            rip_a = a.slice(segment.a_start, segment.a_start + segment.length, ["rip"])
            rip_b = b.slice(segment.b_start, segment.b_start + segment.length, ["rip"])
            values_a: U64 = rip_a.column(0).to_numpy()
            values_b: U64 = rip_b.column(0).to_numpy()
            unique, first = np.unique(values_a, return_index=True)
            # Executed addresses beat label addresses (same thing unless code was reordered).
            anchors.update(zip(unique.tolist(), values_b[first].tolist(), strict=True))
        return cls(CodeLabels(a.metadata), anchors)

    def __call__(self, values: U64) -> U64:
        if len(self._from) == 0:
            return values
        in_code = (values >= self.lo) & (values <= self.hi)
        if not in_code.any():
            return values
        moved = values.copy()
        code = values[in_code]
        index = np.clip(np.searchsorted(self._from, code, side="right") - 1, 0, None)
        moved[in_code] = (code.astype(np.int64) + self._delta[index]).astype(np.uint64)
        return moved

    def scalar(self, value: int) -> int:
        return int(self(np.array([value], dtype=np.uint64))[0])

    def text(self, text: str) -> str:
        """`text` with each hex literal that is a code address of A moved onto B."""

        def move(match: re.Match[str]) -> str:
            return f"{self.scalar(int(match.group(0), 16)):#x}"

        return _HEX.sub(move, text)
