"""Row-by-row comparison of two traces, vectorized over columns, chunk by chunk.

The rows to compare come as `Segment`s: runs of rows paired one to one (A row
`a_start + k` against B row `b_start + k`). In steps mode there is one segment
from row 0; align mode gives one per matched block. Each segment is read in
chunks of at most `CHUNK_ROWS` rows per side (row groups are read once and
cached while a chunk spans them), and each column of a chunk is compared with
one numpy or pyarrow operation, so the cost is a few passes over the column
buffers and memory stays bounded by a couple of row groups, whatever the
trace length.

In align mode a `translate` function maps every 64-bit value of A that points
into A's code onto the matching address in B before comparing, so code that
moved because an instruction was inserted compares equal (see `align.py`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..arch import REGISTERS, WORD
from ..trace.format import STACK_PREFIX
from ..trace.reader import Trace

CHUNK_ROWS = 65536

U64 = npt.NDArray[np.uint64]
Mask = npt.NDArray[np.bool_]
Translate = Callable[[U64], U64]


@dataclass(frozen=True)
class Segment:
    """`length` rows paired one to one: A row `a_start + k` against B row `b_start + k`."""

    a_start: int
    b_start: int
    length: int


class RowCursor:
    """Reads row ranges of one trace, keeping the last row groups it read.

    Chunks of a forward scan rarely line up with row groups (the two traces may
    have different row group sizes, and align mode shifts one side), so a chunk
    can span two groups; the cache makes each group decode once per scan.
    """

    def __init__(self, trace: Trace, columns: Sequence[str]) -> None:
        self.trace = trace
        self.columns = list(columns)
        meta = trace.parquet.metadata
        self._starts = [0]
        for index in range(trace.num_row_groups):
            self._starts.append(self._starts[-1] + meta.row_group(index).num_rows)
        self._cache: dict[int, pa.Table] = {}

    def _group(self, index: int) -> pa.Table:
        table = self._cache.get(index)
        if table is None:
            table = self.trace.row_group(index, self.columns)
            self._cache[index] = table
        return table

    def read(self, start: int, stop: int) -> pa.Table:
        first = bisect.bisect_right(self._starts, start) - 1
        pieces = []
        index = first
        while index < len(self._starts) - 1 and self._starts[index] < stop:
            lo = max(start - self._starts[index], 0)
            hi = min(stop, self._starts[index + 1]) - self._starts[index]
            pieces.append(self._group(index).slice(lo, hi - lo))
            index += 1
        # A forward scan never goes back before `first`: drop what it left behind.
        for stale in [i for i in self._cache if i < first]:
            del self._cache[stale]
        if len(pieces) == 1:
            return pieces[0]
        return pa.concat_tables(pieces)


def compared_columns(a: Trace, b: Trace, ignore: Iterable[str]) -> list[str]:
    """Columns present in both traces that are compared row by row, in file order."""
    ignored = set(ignore)
    names_b = set(b.column_names)
    return [n for n in a.column_names if n in names_b and n != "step" and n not in ignored]


@dataclass
class ScanResult:
    """Per column: how many paired rows differ and the first such pair."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, tuple[int, int]] = field(default_factory=dict)

    def first_pair(self) -> tuple[int, int] | None:
        return min(self.first.values(), default=None)


class Comparator:
    """Compares the same columns of two equally long tables, one mask per column."""

    def __init__(self, columns: Sequence[str], translate: Translate | None = None) -> None:
        self.columns = list(columns)
        self.translate = translate

    def masks(self, a: pa.Table, b: pa.Table) -> dict[str, Mask]:
        out: dict[str, Mask] = {}
        for name in self.columns:
            col_a, col_b = a.column(name), b.column(name)
            if name in REGISTERS:
                out[name] = self._registers(col_a, col_b)
            elif name in ("reads", "writes"):
                out[name] = access_mask(col_a, col_b, self.translate)
            elif name.startswith(STACK_PREFIX):
                out[name] = self._stack(col_a, col_b)
            else:
                out[name] = text_mask(col_a, col_b)
        return out

    def _registers(self, col_a: pa.ChunkedArray, col_b: pa.ChunkedArray) -> Mask:
        values_a: U64 = col_a.to_numpy()
        values_b: U64 = col_b.to_numpy()
        if self.translate is not None:
            values_a = self.translate(values_a)
        result: Mask = values_a != values_b
        return result

    def _stack(self, col_a: pa.ChunkedArray, col_b: pa.ChunkedArray) -> Mask:
        bytes_a, bytes_b = fixed_bytes(col_a), fixed_bytes(col_b)
        if bytes_a.shape != bytes_b.shape:
            return np.ones(len(bytes_a), dtype=np.bool_)
        width = bytes_a.shape[1]
        if width % WORD == 0:
            # Compare whole words: 8 times fewer operations, and the unit in which
            # code addresses (return addresses) sit on a stack.
            words_a: U64 = np.ascontiguousarray(bytes_a).view("<u8")
            words_b: U64 = np.ascontiguousarray(bytes_b).view("<u8")
            if self.translate is not None:
                words_a = self.translate(words_a)
            row_mask: Mask = (words_a != words_b).any(axis=1)
            return row_mask
        byte_mask: Mask = (bytes_a != bytes_b).any(axis=1)
        return byte_mask


def fixed_bytes(column: pa.ChunkedArray | pa.Array) -> npt.NDArray[np.uint8]:
    """A fixed_size_binary(N) column as a (rows, N) uint8 array (no copy if one chunk)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = array.type.byte_width
    buffer = array.buffers()[1]
    if buffer is None or len(array) == 0:
        return np.zeros((len(array), width), dtype=np.uint8)
    flat = np.frombuffer(buffer, dtype=np.uint8)
    start = array.offset * width
    return flat[start : start + len(array) * width].reshape(len(array), width)


def text_mask(col_a: pa.ChunkedArray, col_b: pa.ChunkedArray) -> Mask:
    """Rows where two string (or dictionary-encoded string) columns differ."""
    a = col_a.combine_chunks()
    b = col_b.combine_chunks()
    if (
        isinstance(a, pa.DictionaryArray)
        and isinstance(b, pa.DictionaryArray)
        and a.dictionary.equals(b.dictionary)
    ):
        # Same dictionary (the usual case: same program): compare the indices.
        same_dict: Mask = a.indices.to_numpy() != b.indices.to_numpy()
        return same_dict
    a = a.cast(pa.string()) if isinstance(a, pa.DictionaryArray) else a
    b = b.cast(pa.string()) if isinstance(b, pa.DictionaryArray) else b
    decoded: Mask = pc.not_equal(a, b).to_numpy(zero_copy_only=False)
    return decoded


def access_mask(
    col_a: pa.ChunkedArray | pa.Array,
    col_b: pa.ChunkedArray | pa.Array,
    translate: Translate | None = None,
) -> Mask:
    """Rows whose `reads` (or `writes`) lists differ in length, address, size or data."""
    a = col_a.combine_chunks() if isinstance(col_a, pa.ChunkedArray) else col_a
    b = col_b.combine_chunks() if isinstance(col_b, pa.ChunkedArray) else col_b
    len_a = pc.list_value_length(a).to_numpy(zero_copy_only=False)
    len_b = pc.list_value_length(b).to_numpy(zero_copy_only=False)
    differ: Mask = len_a != len_b
    rows: npt.NDArray[np.int64] | None = None
    if differ.any():
        # Entries only line up where both lists are equally long: compare those rows.
        rows = np.flatnonzero(~differ)
        a, b = a.take(pa.array(rows)), b.take(pa.array(rows))
    flat_a, flat_b = pc.list_flatten(a), pc.list_flatten(b)
    if len(flat_a) == 0:
        return differ
    parents = pc.list_parent_indices(a).to_numpy(zero_copy_only=False)
    entry = entry_mask(flat_a, flat_b, translate)
    hit = parents[entry]
    differ[rows[hit] if rows is not None else hit] = True
    return differ


def entry_mask(flat_a: pa.Array, flat_b: pa.Array, translate: Translate | None) -> Mask:
    """Per access entry (struct addr, size, data): whether the two sides differ."""
    addr_a, size_a, data_a = flat_a.flatten()
    addr_b, size_b, data_b = flat_b.flatten()
    addrs_a: U64 = addr_a.to_numpy(zero_copy_only=False)
    if translate is not None:
        addrs_a = translate(addrs_a)
    differ: Mask = addrs_a != addr_b.to_numpy(zero_copy_only=False)
    differ |= size_a.to_numpy(zero_copy_only=False) != size_b.to_numpy(zero_copy_only=False)
    data_differ: Mask = pc.not_equal(data_a, data_b).to_numpy(zero_copy_only=False)
    if translate is not None:
        # An 8-byte value may be a code address (a pushed return address, a
        # function pointer): compare those as translated words.
        words = (binary_lengths(data_a) == WORD) & (binary_lengths(data_b) == WORD)
        if words.any():
            where = np.flatnonzero(words)
            data_differ[where] = translate(words_of(data_a, where)) != words_of(data_b, where)
    differ |= data_differ
    return differ


def binary_lengths(array: pa.Array) -> npt.NDArray[np.int64]:
    lengths: npt.NDArray[np.int64] = (
        pc.binary_length(array).to_numpy(zero_copy_only=False).astype(np.int64)
    )
    return lengths


def words_of(array: pa.Array, where: npt.NDArray[np.int64]) -> U64:
    """The little-endian uint64 values of the 8-byte entries `where` of a binary array."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset :]
    values = np.frombuffer(array.buffers()[2], dtype=np.uint8)
    starts = offsets[where].astype(np.int64)
    gathered = values[starts[:, None] + np.arange(WORD)]
    words: U64 = np.ascontiguousarray(gathered).view("<u8").reshape(-1)
    return words


def scan(
    a: Trace,
    b: Trace,
    segments: Iterable[Segment],
    columns: Sequence[str],
    translate: Translate | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> ScanResult:
    """Compare every paired row of the segments, column by column, chunk by chunk."""
    result = ScanResult(counts=dict.fromkeys(columns, 0))
    comparator = Comparator(columns, translate)
    cursor_a, cursor_b = RowCursor(a, columns), RowCursor(b, columns)
    for segment in segments:
        for offset in range(0, segment.length, chunk_rows):
            n = min(chunk_rows, segment.length - offset)
            start_a, start_b = segment.a_start + offset, segment.b_start + offset
            masks = comparator.masks(
                cursor_a.read(start_a, start_a + n), cursor_b.read(start_b, start_b + n)
            )
            for name, mask in masks.items():
                count = int(np.count_nonzero(mask))
                if count:
                    result.counts[name] += count
                    if name not in result.first:
                        k = int(np.argmax(mask))
                        result.first[name] = (start_a + k, start_b + k)
    result.counts = {name: n for name, n in result.counts.items() if n}
    return result
