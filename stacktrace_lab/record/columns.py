"""Turning a chunk of raw hook buffers into one Arrow record batch.

Everything here is vectorized over the chunk: registers are a byte buffer
viewed as a (rows, 18) uint64 array, memory events become list<struct>
columns through offsets, and stack snapshots are derived from the region's
bytes at the start of the chunk plus the chunk's write log, instead of
reading memory at every step (tests/test_recorder.py checks them against
memory read directly).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ..arch import REGISTERS
from ..trace.format import ACCESS_TYPE, SnapshotWindow
from .disassembly import InstructionTable
from .machine import MEM_WRITE, Chunk

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


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
        offsets = np.searchsorted(self.rows, np.arange(n_rows + 1)).astype(np.int32)
        data_offsets = np.zeros(len(self.size) + 1, dtype=np.int32)
        np.cumsum(self.size, out=data_offsets[1:])
        data = pa.BinaryArray.from_buffers(
            pa.binary(),
            len(self.size),
            [None, pa.py_buffer(data_offsets.tobytes()), pa.py_buffer(self.data.tobytes())],
        )
        entries = pa.StructArray.from_arrays(
            [pa.array(self.addr, pa.uint64()), pa.array(self.size.astype(np.uint16)), data],
            fields=list(ACCESS_TYPE.value_type),
        )
        return pa.ListArray.from_arrays(pa.array(offsets), entries, type=ACCESS_TYPE)


class SnapshotState:
    """The bytes of one stack's snapshot window, carried from chunk to chunk."""

    def __init__(self, window: SnapshotWindow, initial: bytes) -> None:
        self.window = window
        self.state = bytearray(initial)

    def column(self, writes: Events, n_rows: int) -> pa.Array:
        lo, hi = self.window.base, self.window.top
        inside = (writes.addr < hi) & (writes.addr + writes.size.astype(np.uint64) > lo)
        data_offsets = np.zeros(len(writes.size) + 1, dtype=np.int64)
        np.cumsum(writes.size, out=data_offsets[1:])
        # Versions of the window: the initial state, then one after each step
        # that wrote into it. Row r shows the version after the last write of
        # a step before r.
        versions = [bytes(self.state)]
        changed_after: list[int] = []
        state = self.state
        data = writes.data
        for i in np.flatnonzero(inside).tolist():
            row = int(writes.rows[i])
            addr = int(writes.addr[i])
            start, end = int(data_offsets[i]), int(data_offsets[i + 1])
            if changed_after and changed_after[-1] != row:
                versions.append(bytes(state))
            if not changed_after or changed_after[-1] != row:
                changed_after.append(row)
            first = max(addr, lo)
            last = min(addr + end - start, hi)
            state[first - lo : last - lo] = data[
                start + first - addr : start + last - addr
            ].tobytes()
        if changed_after:
            versions.append(bytes(state))
        table = np.frombuffer(b"".join(versions), dtype=np.uint8).reshape(len(versions), -1)
        version_of_row = np.searchsorted(np.array(changed_after, dtype=np.int64), np.arange(n_rows))
        rows = np.ascontiguousarray(table[version_of_row])
        return pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(self.window.size), n_rows, [None, pa.py_buffer(rows.tobytes())]
        )


def build_batch(
    chunk: Chunk,
    table: InstructionTable,
    snapshots: list[SnapshotState],
    schema: pa.Schema,
) -> pa.RecordBatch:
    n = chunk.rows
    registers = np.frombuffer(chunk.registers, dtype="<u8").reshape(n, len(REGISTERS))
    columns: list[pa.Array] = [pa.array(np.arange(chunk.first_step, chunk.first_step + n))]
    columns += [pa.array(registers[:, i]) for i in range(len(REGISTERS))]

    indices = pa.array(table.indices(registers[:, 0]))
    columns.append(pa.DictionaryArray.from_arrays(indices, pa.array(table.texts, pa.string())))
    columns.append(pa.DictionaryArray.from_arrays(indices, pa.array(table.symbols, pa.string())))

    raw = np.array(chunk.events, dtype=np.int64).reshape(-1, 5)
    is_write = raw[:, 1] == MEM_WRITE
    reads = Events.from_raw(raw[~is_write], chunk.first_step)
    writes = Events.from_raw(raw[is_write], chunk.first_step)
    columns += [reads.column(n), writes.column(n)]
    columns += [snapshot.column(writes, n) for snapshot in snapshots]
    return pa.RecordBatch.from_arrays(columns, schema=schema)
