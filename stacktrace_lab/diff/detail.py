"""The few rows a reader looks at: the first divergent step and its context.

Only these rows are read whole (a handful of single-row slices), so building
the details costs nothing next to the column scan, whatever the trace length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..arch import REGISTERS, WORD
from ..trace.format import STACK_PREFIX
from ..trace.reader import Trace
from .compare import U64, Comparator, RowCursor, Translate, fixed_bytes, for_rip
from .model import (
    Access,
    AccessDelta,
    ByteRange,
    ContextRow,
    Divergence,
    StackDelta,
    StepView,
    ValueDelta,
)

#: At most this many byte ranges of one stack are listed; the count says the rest.
MAX_BYTE_RANGES = 8

Pair = tuple[int | None, int | None]


class RowReader:
    """Single rows of one trace, read once each."""

    def __init__(self, trace: Trace, columns: Sequence[str]) -> None:
        self.trace = trace
        # Every register, whatever is compared: views and the state after a step read them.
        wanted = ["step", *REGISTERS, "symbol", "insn", *columns]
        self.columns = list(dict.fromkeys(c for c in wanted if c in trace.column_names))
        self._rows: dict[int, pa.Table] = {}
        # Rows near the divergence share one or two row groups: read each once.
        self._cursor = RowCursor(trace, self.columns, keep_all=True)

    def __len__(self) -> int:
        return self.trace.num_rows

    def table(self, index: int) -> pa.Table:
        row = self._rows.get(index)
        if row is None:
            row = self._cursor.read(index, index + 1)
            self._rows[index] = row
        return row

    def value(self, index: int, column: str) -> Any:
        return self.table(index).column(column)[0].as_py()

    def view(self, index: int | None) -> StepView | None:
        if index is None or not 0 <= index < len(self):
            return None
        row = self.table(index).to_pylist()[0]
        return StepView(int(row["step"]), int(row["rip"]), row["symbol"], row["insn"])


def _move(translate: Translate | None, value: int) -> int:
    if translate is None:
        return value
    return int(translate(np.array([value], dtype=np.uint64))[0])


def changed_row(
    a: RowReader,
    b: RowReader,
    i: int,
    j: int,
    columns: Sequence[str],
    translate: Translate | None,
) -> Divergence:
    """What exactly differs between A row `i` and B row `j`, and right after them."""
    row_a, row_b = a.table(i), b.table(j)
    masks = Comparator(columns, translate).masks(row_a, row_b)
    differing = tuple(name for name in columns if masks[name][0])
    registers = tuple(
        _delta(name, a.value(i, name), b.value(j, name), translate)
        for name in differing
        if name in REGISTERS
    )
    accesses = tuple(
        _accesses(name, a.value(i, name), b.value(j, name), translate)
        for name in differing
        if name in ("reads", "writes")
    )
    stacks = tuple(
        _stack(name, row_a.column(name), row_b.column(name), _window_base(a.trace, name), translate)
        for name in differing
        if name.startswith(STACK_PREFIX)
    )
    return Divergence(
        "changed",
        a.view(i),
        b.view(j),
        columns=differing,
        registers=registers,
        accesses=accesses,
        stacks=stacks,
        after=_after(a, b, i, j, columns, translate),
    )


def _after(
    a: RowReader,
    b: RowReader,
    i: int,
    j: int,
    columns: Sequence[str],
    translate: Translate | None,
) -> tuple[ValueDelta, ...]:
    """Registers that differ once the divergent instruction has run (next row, or final)."""

    def state(reader: RowReader, index: int) -> dict[str, int]:
        if index + 1 < len(reader):
            return {r: reader.value(index + 1, r) for r in REGISTERS}
        return dict(reader.trace.metadata.final)

    after_a, after_b = state(a, i), state(b, j)
    deltas = (
        _delta(name, after_a[name], after_b[name], translate)
        for name in REGISTERS
        if name in columns and name in after_a and name in after_b
    )
    return tuple(d for d in deltas if (d.a if d.a_in_b is None else d.a_in_b) != d.b)


def _delta(name: str, a: int, b: int, translate: Translate | None) -> ValueDelta:
    """A register of both sides, with A's value as compared (moved onto B's code) if moved."""
    moved = _move(for_rip(translate) if name == "rip" else translate, a)
    return ValueDelta(name, a, b, moved if moved != a else None)


def _window_base(trace: Trace, column: str) -> int:
    for window in trace.metadata.snapshots.values():
        if window.column == column:
            return window.base
    return 0


def _accesses(
    column: str,
    a: list[dict[str, Any]],
    b: list[dict[str, Any]],
    translate: Translate | None,
) -> AccessDelta:
    def access(entry: dict[str, Any]) -> Access:
        return Access(int(entry["addr"]), int(entry["size"]), bytes(entry["data"]))

    def moved(x: Access) -> Access:
        """`x` with `in_b` set when moving its address or (word) value onto B's code changes it."""
        addr, value = _move(translate, x.addr), x.value
        if len(x.data) == WORD:
            value = _move(translate, value)
        if (addr, value) == (x.addr, x.value):
            return x
        return Access(x.addr, x.size, x.data, (addr, value))

    list_a, list_b = tuple(moved(access(x)) for x in a), tuple(access(x) for x in b)

    def same(x: Access, y: Access) -> bool:
        addr, value = x.in_b if x.in_b is not None else (x.addr, x.value)
        return (addr, x.size, value) == (y.addr, y.size, y.value)

    entries = tuple(
        k
        for k in range(max(len(list_a), len(list_b)))
        if k >= len(list_a) or k >= len(list_b) or not same(list_a[k], list_b[k])
    )
    return AccessDelta(column, list_a, list_b, entries)


def _stack(
    column: str,
    col_a: pa.ChunkedArray,
    col_b: pa.ChunkedArray,
    base: int,
    translate: Translate | None,
) -> StackDelta:
    raw_a, raw_b = fixed_bytes(col_a)[0], fixed_bytes(col_b)[0]
    if raw_a.shape != raw_b.shape:
        return StackDelta(column, max(len(raw_a), len(raw_b)), ())
    compared_a = raw_a
    if translate is not None and len(raw_a) % WORD == 0:
        words: U64 = np.ascontiguousarray(raw_a).view("<u8")
        compared_a = translate(words).view(np.uint8)
    differ = compared_a != raw_b
    indices = np.flatnonzero(differ)
    ranges: list[ByteRange] = []
    # Whole words where the window is made of words, so each shows as a value.
    unit = WORD if len(raw_a) % WORD == 0 else 1
    if len(indices):
        # Contiguous runs of differing units: split where the index jumps.
        units = np.unique(indices // unit)
        breaks = np.flatnonzero(np.diff(units) > 1) + 1
        for run in np.split(units, breaks)[:MAX_BYTE_RANGES]:
            start, stop = int(run[0]) * unit, (int(run[-1]) + 1) * unit
            a_bytes, moved = raw_a[start:stop].tobytes(), compared_a[start:stop].tobytes()
            ranges.append(
                ByteRange(
                    start,
                    stop,
                    base + start,
                    a_bytes,
                    raw_b[start:stop].tobytes(),
                    moved if moved != a_bytes else None,
                )
            )
    return StackDelta(column, len(indices), tuple(ranges))


def context_rows(
    a: RowReader,
    b: RowReader,
    pairs: Sequence[Pair],
    focus: int,
    columns: Sequence[str],
    translate: Translate | None,
) -> tuple[ContextRow, ...]:
    rows = []
    for k, (i, j) in enumerate(pairs):
        view_a, view_b = a.view(i), b.view(j)
        differing: tuple[str, ...] = ()
        if view_a is not None and view_b is not None and i is not None and j is not None:
            masks = Comparator(columns, translate).masks(a.table(i), b.table(j))
            differing = tuple(name for name in columns if masks[name][0])
        rows.append(ContextRow(view_a, view_b, differing, k == focus))
    return tuple(rows)
