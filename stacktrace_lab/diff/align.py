"""Align mode: pair the rows of two traces by what runs, not by step number or address.

An instruction inserted before the switch shifts every later step number, and
every later code address by its length. Align mode therefore:

1. gives each row a key that does not move when code is inserted: the label of
   its `symbol` (`main` of `main+8`: the offset shifts inside the function that
   grew) and its instruction text with code addresses replaced by their label
   and rip-relative displacements dropped (`callq 0x40003a` -> `callq <gt_switch>`);
2. pairs rows by those keys (`pair_keys`): the common prefix and suffix are
   found with two vectorized comparisons; in the region between them, runs of
   equal keys are followed with vectorized comparisons, and where the keys
   stop matching the two sides are resynchronised at the nearest pair of
   positions (fewest rows skipped on both sides together) where the next
   `RESYNC_RUN` keys agree. Those n-grams are compared as 64-bit rolling
   hashes, a whole window of candidates at once, and confirmed exactly. This
   is a greedy diff, not a minimal one (Myers): it costs time in proportion
   to the number of rows plus, per divergence, the square of the rows
   skipped, so two loops that differ in every iteration align in seconds;
   difflib took minutes on 300k rows. If no resync point lies within
   `ALIGN_WINDOW` rows of each side, the rest of the region is reported
   unaligned;
3. builds an `AddressMap` from the labels both traces define and the paired
   rows' `rip`s: any 64-bit value of A that points into A's code is moved to
   the matching address in B before registers, memory accesses and stack words
   are compared, so a return address or function pointer into moved code
   compares equal. A label's address maps to the same label in B even when
   the label's first instruction moved (an instruction inserted right after
   the label): a value equal to a label's address is a pointer to the label.

Limits: a change of a branch target inside the same label keeps the key
(the difference shows as a `rip` difference at the next row); a value of A that
merely looks like a code address is translated too.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..trace.arrays import numpy_of
from ..trace.format import TraceMetadata
from ..trace.reader import Trace
from .compare import U64, Segment, paired_rows
from .model import Gap

#: How far (in rows, on each side) a resync point is looked for.
ALIGN_WINDOW = 4096
#: Rows that must agree for a resync: fewer would pair rows of unrelated code by chance.
RESYNC_RUN = 8
#: First window of a resync search; it doubles up to ALIGN_WINDOW.
_FIRST_WINDOW = 64

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
            sym_idx = numpy_of(symbol.indices)
            insn_idx = numpy_of(insn.indices)
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


def align_traces(a: Trace, b: Trace, window: int = ALIGN_WINDOW) -> AlignmentPlan:
    table = KeyTable()
    return pair_keys(table.keys(a), table.keys(b), window)


def pair_keys(
    keys_a: npt.NDArray[np.int64], keys_b: npt.NDArray[np.int64], window: int = ALIGN_WINDOW
) -> AlignmentPlan:
    """The alignment of two key sequences: equal blocks and the gaps between them."""
    len_a, len_b = len(keys_a), len(keys_b)
    n = min(len_a, len_b)
    prefix = _common_run(keys_a[:n], keys_b[:n])
    suffix = _common_run(keys_a[len_a - n + prefix :][::-1], keys_b[len_b - n + prefix :][::-1])
    end_a, end_b = len_a - suffix, len_b - suffix

    opcodes: list[Opcode] = []
    if prefix:
        opcodes.append(Opcode("equal", 0, prefix, 0, prefix))
    limited = False
    if end_a > prefix or end_b > prefix:
        # Only the rows past the common prefix are hashed (a golden compared with a
        # trace changed near its end has almost nothing to align).
        resync = _Resync(keys_a[prefix:], keys_b[prefix:], window)
        middle, limited = resync.pair(0, end_a - prefix, 0, end_b - prefix)
        opcodes += [
            Opcode(
                op.kind,
                op.a_start + prefix,
                op.a_stop + prefix,
                op.b_start + prefix,
                op.b_stop + prefix,
            )
            for op in middle
        ]
    if suffix:
        opcodes.append(Opcode("equal", end_a, len_a, end_b, len_b))
    return AlignmentPlan(tuple(opcodes), limited)


class _Resync:
    """Greedy pairing of the divergent middle of two key sequences (see the module doc)."""

    def __init__(
        self, keys_a: npt.NDArray[np.int64], keys_b: npt.NDArray[np.int64], window: int
    ) -> None:
        self.a, self.b = keys_a, keys_b
        self.window = max(window, 0)
        # Rolling hashes of the RESYNC_RUN keys starting at each row, in one id space;
        # an n-gram that runs past the end gets a side-specific marker, so it never matches.
        inverse = np.unique(np.concatenate([keys_a, keys_b]), return_inverse=True)[1]
        ids: npt.NDArray[np.uint64] = inverse.astype(np.uint64) + np.uint64(1)
        self.hash_a = _ngram_hashes(ids[: len(keys_a)], marker=1)
        self.hash_b = _ngram_hashes(ids[len(keys_a) :], marker=2)

    def pair(self, i: int, end_a: int, j: int, end_b: int) -> tuple[list[Opcode], bool]:
        opcodes: list[Opcode] = []
        while i < end_a and j < end_b:
            run = _common_run_from(self.a, self.b, i, j, min(end_a - i, end_b - j))
            if run:
                opcodes.append(Opcode("equal", i, i + run, j, j + run))
                i, j = i + run, j + run
                continue
            found = self._resync(i, end_a, j, end_b)
            if found is None:
                opcodes.append(Opcode("unaligned", i, end_a, j, end_b))
                return opcodes, True
            skip_a, skip_b = found
            opcodes.append(_gap(i, i + skip_a, j, j + skip_b))
            i, j = i + skip_a, j + skip_b
        if i < end_a or j < end_b:
            opcodes.append(_gap(i, end_a, j, end_b))
        return opcodes, False

    def _resync(self, i: int, end_a: int, j: int, end_b: int) -> tuple[int, int] | None:
        """Rows to skip on each side to the nearest point where RESYNC_RUN keys agree.

        Skipping to the end of both regions (where the common suffix starts)
        counts as a resync too. None if there is none within the window.
        """
        # One row inserted or deleted (the usual edit, once per loop iteration):
        # nothing can be nearer, and it costs two scalar comparisons.
        for x, y in ((0, 1), (1, 0)):
            if (
                i + x < end_a
                and j + y < end_b
                and self.hash_a[i + x] == self.hash_b[j + y]
                and self._agree(i + x, j + y, end_a, end_b)
            ):
                return x, y
        width = min(_FIRST_WINDOW, self.window)
        while width:
            wa, wb = min(width, end_a - i), min(width, end_b - j)
            # Candidates (x, y): A row i+x and B row j+y start equal n-grams.
            grams_a = self.hash_a[i : i + wa]
            grams_b = self.hash_b[j : j + wb]
            xs, ys = np.nonzero(grams_a[:, None] == grams_b[None, :])
            best: tuple[int, int] | None = None
            if len(xs):
                order = np.argsort(xs + ys, kind="stable")
                for k in order[:64]:  # hash collisions are rare: few need checking
                    x, y = int(xs[k]), int(ys[k])
                    if self._agree(i + x, j + y, end_a, end_b):
                        best = (x, y)
                        break
            if wa == end_a - i and wb == end_b - j:
                everything = (end_a - i, end_b - j)
                if best is None or sum(everything) < sum(best):
                    best = everything
            if best is not None:
                return best
            if width >= self.window:
                return None
            width = min(width * 2, self.window)
        return None

    def _agree(self, i: int, j: int, end_a: int, end_b: int) -> bool:
        n = min(RESYNC_RUN, end_a - i, end_b - j)
        return bool(np.array_equal(self.a[i : i + n], self.b[j : j + n]))


def _ngram_hashes(ids: npt.NDArray[np.uint64], marker: int) -> npt.NDArray[np.uint64]:
    """For each row, a 64-bit hash of the RESYNC_RUN ids starting there (wrapping arithmetic)."""
    prime = np.uint64(0x100000001B3)
    padded = np.concatenate([ids, np.full(RESYNC_RUN - 1, marker << 40, dtype=np.uint64)])
    out = np.zeros(len(ids), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for t in range(RESYNC_RUN):
            out = out * prime + padded[t : t + len(ids)]
    return out


def _gap(a_start: int, a_stop: int, b_start: int, b_stop: int) -> Opcode:
    if a_stop == a_start:
        kind = "inserted"
    elif b_stop == b_start:
        kind = "deleted"
    else:
        kind = "replaced"
    return Opcode(kind, a_start, a_stop, b_start, b_stop)


def _common_run(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> int:
    """Length of the common leading run of two equally long key arrays."""
    differ = a != b
    return int(np.argmax(differ)) if differ.any() else len(a)


def _common_run_from(
    a: npt.NDArray[np.int64], b: npt.NDArray[np.int64], i: int, j: int, limit: int
) -> int:
    """Length of the run of equal keys from A row i and B row j, in growing blocks."""
    run, block = 0, 256
    while run < limit:
        n = min(block, limit - run)
        step = _common_run(a[i + run : i + run + n], b[j + run : j + run + n])
        run += step
        if step < n:
            break
        block *= 4
    return run


class AddressMap:
    """Moves code addresses of A onto the matching code addresses of B.

    Anchors are pairs (address in A, address in B) of the same instruction (from
    paired rows) or the same label. A code address of A moves by the distance of
    the nearest anchor at or below it; that is exact for executed instructions
    and for addresses just after one (a return address), and for anything else
    as good as "the code up to here moved by this much".
    """

    def __init__(
        self,
        labels_a: CodeLabels,
        anchors: dict[int, int],
        executed: dict[int, int] | None = None,
    ) -> None:
        self.lo, self.hi = labels_a.lo, labels_a.hi
        ordered = sorted(anchors.items())
        self._from = np.array([a for a, _ in ordered], dtype=np.uint64)
        # Signed distances, applied only to code addresses (far below 2**63).
        self._delta = np.array([b - a for a, b in ordered], dtype=np.int64)
        #: The map for `rip` itself, where executed instructions win over labels.
        self.executed: AddressMap | None = (
            AddressMap(labels_a, executed) if executed is not None else None
        )

    @classmethod
    def build(cls, a: Trace, b: Trace, plan: AlignmentPlan) -> AddressMap:
        # Each rip of A's paired rows, mapped to B's rip in the first row paired with it;
        # `_MAP_ROWS` paired rows at a time, so that neither the rows nor the rips of
        # a long trace are held at once.
        anchors: dict[int, int] = {}
        for batch in _batches_of_rows(plan.segments(), _MAP_ROWS):
            rows_a, rows_b = paired_rows(batch)
            values_a = _rips(a, rows_a)
            values_b = _rips(b, rows_b)
            unique, first = np.unique(values_a, return_index=True)
            for addr, moved in zip(unique.tolist(), values_b[first].tolist(), strict=True):
                anchors.setdefault(addr, moved)
        executed = dict(anchors)
        # Labels last, so they win: with `sub $8, %rsp` inserted right after `hello:`,
        # A's first instruction of hello pairs with B's second, yet a pointer to
        # `hello` (A's label address) is a pointer to B's `hello`, not to B's second
        # instruction. The address after a call that ends just before a label is
        # that label's address in both traces too.
        for label, addr in b.metadata.symbols.items():
            if label in a.metadata.symbols:
                anchors[a.metadata.symbols[label]] = addr
                executed.setdefault(a.metadata.symbols[label], addr)
        return cls(CodeLabels(a.metadata), anchors, executed)

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


#: Paired rows whose rips are read at a time for the address map.
_MAP_ROWS = 1 << 20


def _batches_of_rows(segments: Sequence[Segment], rows: int) -> Iterator[list[Segment]]:
    """The segments in order, cut into lists of at most `rows` paired rows each."""
    batch: list[Segment] = []
    size = 0
    for segment in segments:
        done = 0
        while done < segment.length:
            take = min(segment.length - done, rows - size)
            batch.append(Segment(segment.a_start + done, segment.b_start + done, take))
            size += take
            done += take
            if size == rows:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _rips(trace: Trace, rows: npt.NDArray[np.int64]) -> U64:
    """rip at each of `rows` (in any order), reading only the rows they span."""
    if not rows.size:
        return np.zeros(0, dtype=np.uint64)
    lo, hi = int(rows.min()), int(rows.max()) + 1
    rip: U64 = numpy_of(trace.slice(lo, hi, ["rip"]).column("rip"))
    out: U64 = rip[rows - lo]
    return out
