"""Single steps of a trace, the executed-instruction listing, and finding steps.

A trace row is the machine *before* its instruction, so "the registers at step
N" is row N, and the instruction at step N changes them into row N + 1. Rows
are read through `Trace.slice`, which only touches the row group holding the
step, and searches go row group by row group, so all of this stays cheap on a
trace of millions of rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..arch import REGISTERS
from ..errors import BadInput
from ..trace.arrays import arrow_indices, numpy_of
from ..trace.reader import Trace

#: Instruction prefixes that capstone prints before the mnemonic.
_PREFIXES = frozenset({"rep", "repe", "repz", "repne", "repnz", "lock", "bnd", "notrack"})


def mnemonic(text: str) -> str:
    """The mnemonic of an instruction text (`retq` of `retq`, `movq` of `movq %rcx, (%rax)`)."""
    words = text.split()
    while len(words) > 1 and words[0] in _PREFIXES:
        words = words[1:]
    return words[0] if words else ""


@dataclass(frozen=True)
class Access:
    """One memory access of an instruction (an entry of `reads` or `writes`)."""

    addr: int
    size: int
    data: bytes

    @property
    def value(self) -> int:
        return int.from_bytes(self.data, "little")


@dataclass(frozen=True)
class StepRow:
    """One step: the registers before its instruction, the instruction and its accesses."""

    step: int
    registers: dict[str, int]
    insn: str
    #: call, ret, jmp, indirect-jmp, syscall or other (the trace's `kind` column).
    kind: str
    symbol: str
    reads: tuple[Access, ...]
    writes: tuple[Access, ...]
    #: The instruction's bytes (the `insn_bytes` column): what decoding it reads, not `insn`.
    insn_bytes: bytes
    #: The thread of the process that ran it (the `thread` column; 1: the first).
    thread: int = 1

    @property
    def rip(self) -> int:
        return self.registers["rip"]

    @property
    def rsp(self) -> int:
        return self.registers["rsp"]


@dataclass(frozen=True)
class Instruction:
    """One distinct executed instruction, for listings."""

    addr: int
    text: str
    symbol: str
    data: bytes = b""  # its bytes (the trace's `insn_bytes`)
    kind: str = ""  # the trace's `kind`: call, ret, jmp, ... (in `instruction_listing`)


BoolArray = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]

ROW_COLUMNS = (
    "step",
    *REGISTERS,
    "insn",
    "kind",
    "symbol",
    "reads",
    "writes",
    "insn_bytes",
    "thread",
)


def check_step(trace: Trace, step: int) -> int:
    """`step` if the trace has it, else a `BadInput` naming the file and the valid range."""
    if not 0 <= step < trace.num_rows:
        raise BadInput(
            f"{trace.path}: no step {step}: the trace has steps 0 to {trace.num_rows - 1}"
        )
    return step


def _accesses(value: object) -> tuple[Access, ...]:
    entries = value if isinstance(value, list) else []
    return tuple(Access(int(e["addr"]), int(e["size"]), bytes(e["data"])) for e in entries)


def rows(trace: Trace, start: int, stop: int) -> list[StepRow]:
    """Steps `start ..< stop` (clipped to the trace) as `StepRow`s: for a handful of rows."""
    start, stop = max(start, 0), min(stop, trace.num_rows)
    if start >= stop:
        return []
    table = trace.slice(start, stop, ROW_COLUMNS)
    data = table.to_pydict()
    out = []
    for i in range(table.num_rows):
        out.append(
            StepRow(
                step=int(data["step"][i]),
                registers={name: int(data[name][i]) for name in REGISTERS},
                insn=str(data["insn"][i]),
                kind=str(data["kind"][i]),
                symbol=str(data["symbol"][i]),
                reads=_accesses(data["reads"][i]),
                writes=_accesses(data["writes"][i]),
                insn_bytes=bytes(data["insn_bytes"][i]),
                thread=int(data["thread"][i]),
            )
        )
    return out


def row_at(trace: Trace, step: int) -> StepRow:
    return rows(trace, check_step(trace, step), step + 1)[0]


def registers_after(trace: Trace, step: int) -> dict[str, int]:
    """The registers once the instruction at `step` has run (the next row, or the final state)."""
    if step + 1 < trace.num_rows:
        return row_at(trace, step + 1).registers
    return dict(trace.metadata.final)


def text_mask(column: pa.ChunkedArray | pa.Array, predicate: Callable[[str], bool]) -> BoolArray:
    """A boolean per row of a text column (`insn`, `kind`, `symbol`), deciding once
    per distinct text."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(array.type, pa.DictionaryType):
        texts = array.dictionary.to_pylist()
        accepted = np.array([predicate(str(t)) for t in texts] + [False], dtype=bool)
        indices = numpy_of(pc.fill_null(array.indices, len(texts)))
        mask: BoolArray = accepted[indices]
        return mask
    return np.array([predicate(str(t)) for t in array.to_pylist()], dtype=bool)


def find_symbol_address(trace: Trace, name: str) -> int:
    """The address of `label` or `label+offset` (decimal or 0x hex offset)."""
    label, plus, offset_text = name.partition("+")
    symbols = trace.metadata.symbols
    if label not in symbols:
        known = ", ".join(sorted(symbols)) or "none"
        raise BadInput(f"{trace.path}: no symbol '{label}' in the trace (symbols: {known})")
    offset = 0
    if plus:
        try:
            offset = int(offset_text, 0)
        except ValueError:
            raise BadInput(f"{trace.path}: bad offset in '{name}'") from None
    return symbols[label] + offset


def first_step_at(trace: Trace, name: str) -> int:
    """The first step whose rip is at `name` (`label` or `label+offset`)."""
    address = find_symbol_address(trace, name)
    offset = 0
    for group in trace.iter_row_groups(["rip"]):
        rip = numpy_of(group.column("rip"))
        hits = np.flatnonzero(rip == np.uint64(address))
        if len(hits):
            return offset + int(hits[0])
        offset += group.num_rows
    raise BadInput(f"{trace.path}: no step executes {name} ({address:#x})")


def instruction_listing(trace: Trace) -> list[Instruction]:
    """Every distinct executed instruction, in address order.

    Reads `rip` one row group at a time and keeps one row per distinct rip; the
    text columns (`insn`, `symbol`, `kind`, `insn_bytes`) are read only from
    the row groups where a new rip first ran, which on a long loop are the first
    few. So the cost is about one pass over the rip column.
    """
    seen: dict[int, Instruction] = {}
    names = ("rip", "insn", "symbol", "insn_bytes", "kind")
    for g in range(trace.num_row_groups):
        column = trace.row_group(g, ["rip"]).column("rip")
        # Hashing (Arrow's unique) first: np.unique would sort every row.
        distinct = numpy_of(pc.unique(column))
        rip = numpy_of(column)
        fresh = [addr for addr in distinct.tolist() if addr not in seen]
        if not fresh:
            continue
        # The first row of each new rip, in row order (as np.unique's first index).
        rows = np.flatnonzero(np.isin(rip, np.array(fresh, dtype=rip.dtype)))
        _, first = np.unique(rip[rows], return_index=True)
        new = sorted(rows[first].tolist())
        group = trace.row_group(g, list(names))
        picked = group.take(arrow_indices(new)).to_pydict()
        columns = (picked[name] for name in names)
        for addr, text, symbol, data, kind in zip(*columns, strict=True):
            seen[int(addr)] = Instruction(
                int(addr), str(text), str(symbol), bytes(data or b""), str(kind)
            )
    return [seen[a] for a in sorted(seen)]


def listing_around(listing: Sequence[Instruction], rip: int, context: int) -> list[Instruction]:
    """`context` instructions either side of `rip` in an address-ordered listing."""
    addresses = [i.addr for i in listing]
    at = int(np.searchsorted(np.array(addresses, dtype=np.uint64), np.uint64(rip)))
    return list(listing[max(at - context, 0) : at + context + 1])


def group_starts(trace: Trace) -> I64:
    """The first row of each row group, plus the row count at the end."""
    sizes = [trace.parquet.metadata.row_group(i).num_rows for i in range(trace.num_row_groups)]
    starts = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    return starts


def instructions_at(trace: Trace, steps: Sequence[int]) -> dict[int, Instruction]:
    """The instruction executed at each of `steps`, reading only the row groups that hold them."""
    wanted = sorted({s for s in steps if 0 <= s < trace.num_rows})
    starts = group_starts(trace)
    found: dict[int, Instruction] = {}
    groups = np.searchsorted(starts, np.array(wanted, dtype=np.int64), side="right") - 1
    for group in sorted(set(groups.tolist())):
        in_group = [s for s, g in zip(wanted, groups.tolist(), strict=True) if g == group]
        table = trace.row_group(group, ["rip", "insn", "symbol"])
        picked = table.take(arrow_indices([s - int(starts[group]) for s in in_group]))
        data = picked.to_pydict()
        for s, rip, text, symbol in zip(
            in_group, data["rip"], data["insn"], data["symbol"], strict=True
        ):
            found[s] = Instruction(int(rip), str(text), str(symbol))
    return found
