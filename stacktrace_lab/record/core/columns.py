"""Turning a chunk of raw hook buffers into one Arrow record batch.

Everything here is vectorized over the chunk: registers are a byte buffer
viewed as a (rows, 18) uint64 array, memory events become list<struct>
columns through offsets, and stack snapshots are derived from the region's
bytes at the start of the chunk plus the chunk's write log, instead of
reading memory at every step (tests/test_recorder.py checks them against
memory read directly).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ...arch import REGISTERS
from ...disassembly import InstructionTable, distinct_by_arrow
from ...trace import arrays
from ...trace.format import ACCESS_TYPE, SnapshotWindow
from ..machine.machine import Chunk
from .hooks import MEM_WRITE, events_array, native_module

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
_RIP = REGISTERS.index("rip")


class Events:
    """A chunk's memory events of one kind, with the halves of wide accesses merged.

    Unicorn reports a 16-byte SSE access as two 8-byte events; consecutive
    events of one step that continue each other become one entry whose data
    is the concatenated little-endian bytes.
    """

    def __init__(self, rows: I64, addr: npt.NDArray[np.uint64], size: I64, data: U8) -> None:
        self.rows = rows  # row within the chunk
        self.addr = addr
        self.size = size
        self.data = data  # all entries' bytes, concatenated
        self.data_end = np.cumsum(size)  # where each entry's bytes end in `data`

    @classmethod
    def from_raw(cls, raw: npt.NDArray[np.int64], first_step: int) -> Events:
        if len(raw) == 0:
            empty = np.zeros(0, dtype=np.int64)
            return cls(empty, empty.astype(np.uint64), empty, np.zeros(0, dtype=np.uint8))
        rows = raw[:, 0] - first_step
        addr = raw[:, 2].astype(np.uint64)
        size = np.minimum(raw[:, 3], 8)
        value_bytes = raw[:, 4].astype("<i8").view(np.uint8).reshape(-1, 8)
        data = value_bytes[np.arange(8) < size[:, None]]
        continues = np.zeros(len(raw), dtype=bool)
        continues[1:] = (rows[1:] == rows[:-1]) & (
            addr[1:] == addr[:-1] + size[:-1].astype(np.uint64)
        )
        starts = np.flatnonzero(~continues)
        merged_size = np.add.reduceat(size, starts)
        return cls(rows[starts], addr[starts], merged_size, data)

    def column(self, n_rows: int) -> pa.Array:
        # offsets[k]: the entries of rows before k (what searchsorted of 0..n_rows in
        # the sorted rows gives), counted in one pass instead of n_rows searches.
        below = np.bincount(np.clip(self.rows, -1, n_rows) + 1, minlength=n_rows + 2)
        offsets = np.cumsum(below[: n_rows + 1], dtype=np.int64).astype(np.int32)
        data_offsets = np.zeros(len(self.size) + 1, dtype=np.int32)
        data_offsets[1:] = self.data_end
        data = pa.BinaryArray.from_buffers(
            pa.binary(),
            len(self.size),
            [None, pa.py_buffer(data_offsets), pa.py_buffer(np.ascontiguousarray(self.data))],
        )
        entries = pa.StructArray.from_arrays(
            [arrays.numeric(self.addr, pa.uint64()), arrays.numeric(self.size, pa.uint16()), data],
            fields=list(ACCESS_TYPE.value_type),
        )
        return pa.ListArray.from_arrays(
            arrays.numeric(offsets, pa.int32()), entries, type=ACCESS_TYPE
        )


class SnapshotState:
    """The bytes of one stack's snapshot window, carried from chunk to chunk."""

    def __init__(self, window: SnapshotWindow, initial: bytes) -> None:
        self.window = window
        self.state = bytearray(initial)

    def column(self, writes: Events, n_rows: int, dictionary: bool = False) -> pa.Array:
        """The window before each row of the chunk, from the chunk's writes.

        A version of the window is its state after a step that wrote into it;
        row r shows the version left by the last such step before r. Versions
        are built by replaying only the writes that land in the window (a
        plain loop over those, with slices of one bytes object, measured
        faster than a vectorized forward fill over versions x bytes, which
        does 512 operations per version where a write touches 8 bytes); rows
        are then gathered from the versions with one numpy take.

        `dictionary`: as trace format 5 stores it, the distinct versions in
        the order rows first show them, and each row's index among them
        (`dictionary<int32, binary>`): Parquet writes that as it is, where it
        hashes every row's bytes of a dense column again.
        """
        lo, size = self.window.base, self.window.size
        ends = writes.addr + writes.size.astype(np.uint64)
        inside = np.flatnonzero((writes.addr < lo + size) & (ends > lo))
        data_end = writes.data_end[inside]
        data_start = data_end - writes.size[inside]
        native = native_module()
        if native is not None:  # the same loop in C, without the GIL (_core.c)
            arguments = (
                self.state,
                lo,
                n_rows,
                np.ascontiguousarray(writes.rows[inside], dtype=np.int64),
                np.ascontiguousarray(writes.addr[inside], dtype=np.uint64),
                np.ascontiguousarray(data_start, dtype=np.int64),
                np.ascontiguousarray(data_end, dtype=np.int64),
                np.ascontiguousarray(writes.data),  # read in place, not copied
            )
            if dictionary:
                indices = pa.allocate_buffer(n_rows * 4)
                distinct = native.snapshot_dictionary(*arguments, indices)
                return _dictionary(indices, distinct, size, n_rows)
            rows = pa.allocate_buffer(n_rows * size)
            native.snapshot_rows(*arguments, rows)
            return pa.FixedSizeBinaryArray.from_buffers(pa.binary(size), n_rows, [None, rows])
        state = self.state
        data = writes.data.tobytes()
        versions: list[bytes] = [bytes(state)]
        changed_rows: list[int] = []
        current = -1
        for row, addr, start, end in zip(
            writes.rows[inside].tolist(),
            writes.addr[inside].tolist(),
            data_start.tolist(),
            data_end.tolist(),
            strict=True,
        ):
            if row != current:
                if current >= 0:
                    versions.append(bytes(state))
                changed_rows.append(row)
                current = row
            first = addr - lo
            last = first + end - start
            if first < 0:  # clip a write that straddles the window's edges
                start -= first
                first = 0
            if last > size:
                end -= last - size
                last = size
            state[first:last] = data[start:end]
        if changed_rows:
            versions.append(bytes(state))
        # Row r shows the version after the last changed step strictly before r.
        version_of_row = np.searchsorted(np.asarray(changed_rows), np.arange(n_rows), side="left")
        if dictionary:
            # The versions rows show (the last may be shown by none), each value
            # once, numbered in the order rows first show them: as _core.c does.
            shown = int(version_of_row[-1]) + 1 if n_rows else 0
            number: dict[bytes, int] = {}
            renumbered = np.array(
                [number.setdefault(v, len(number)) for v in versions[:shown]], dtype=np.int32
            )
            indices = np.ascontiguousarray(renumbered[version_of_row], dtype=np.int32)
            return _dictionary(pa.py_buffer(indices), b"".join(number), size, n_rows)
        table = np.frombuffer(b"".join(versions), dtype=np.uint8).reshape(len(versions), size)
        rows = np.ascontiguousarray(table[version_of_row])
        return pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(size), n_rows, [None, pa.py_buffer(rows)]
        )


def _dictionary(indices: pa.Buffer, distinct: bytes, size: int, n_rows: int) -> pa.Array:
    """A `dictionary<int32, binary>` array: `n_rows` int32 `indices` into `distinct`,
    the concatenated versions of a window of `size` bytes."""
    count = len(distinct) // size
    offsets = np.arange(0, (count + 1) * size, size, dtype=np.int32)
    versions = pa.Array.from_buffers(
        pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(distinct)]
    )
    codes = pa.Array.from_buffers(pa.int32(), n_rows, [None, indices])
    return pa.DictionaryArray.from_arrays(codes, versions)


def thread_column(chunk: Chunk) -> pa.Array:
    """The chunk's `thread` column (format 4): 1 on every row unless threads ran."""
    # From buffers: `pa.array` would import pandas (trace/arrays.py), 0.17 CPU s.
    if chunk.threads:
        return arrays.numeric(np.frombuffer(chunk.threads, dtype="<u2"), pa.uint16())
    return arrays.numeric(np.ones(chunk.rows, dtype=np.uint16), pa.uint16())


def distinct_rips(rips: npt.NDArray[np.uint64]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[Any]]:
    """The distinct rips and each row's index among them: by the C core's hash
    where it is built (no pyarrow.compute import), else by Arrow's."""
    native = native_module()
    if native is None:
        return distinct_by_arrow(rips)
    values = np.ascontiguousarray(rips, dtype=np.uint64)
    inverse = np.empty(len(values), dtype=np.int32)
    unique = np.frombuffer(native.distinct_u64(values, inverse), dtype=np.uint64)
    return unique, inverse


def build_batch(
    chunk: Chunk,
    table: InstructionTable,
    snapshots: list[SnapshotState],
    schema: pa.Schema,
) -> pa.RecordBatch:
    n = chunk.rows
    # Register by register already (the C core fills them so): each column is
    # taken as it is, without a copy.
    steps = np.arange(chunk.first_step, chunk.first_step + n, dtype=np.int64)
    columns: list[pa.Array] = [arrays.numeric(steps, pa.int64())]
    by_register = chunk.by_register()
    columns += [arrays.numeric(by_register[i], pa.uint64()) for i in range(len(REGISTERS))]

    # Per-instruction facts (insn, symbol, kind, label, ...): looked up once
    # per distinct address, gathered per row.
    facts = table.columns(by_register[_RIP], chunk.code, distinct_rips)
    columns += [facts[name] for name in schema.names if name in facts]

    raw = events_array(chunk.events)
    is_write = raw[:, 1] == MEM_WRITE
    reads = Events.from_raw(raw[~is_write], chunk.first_step)
    writes = Events.from_raw(raw[is_write], chunk.first_step)
    columns += [reads.column(n), writes.column(n)]
    # Trace format 5 stores the windows as dictionaries; replay compares dense rows.
    columns += [
        snapshot.column(
            writes, n, pa.types.is_dictionary(schema.field(snapshot.window.column).type)
        )
        for snapshot in snapshots
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)
