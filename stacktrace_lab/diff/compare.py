"""Row-by-row comparison of two traces, vectorized over columns, chunk by chunk.

The rows to compare come as `Segment`s: runs of rows paired one to one (A row
`a_start + k` against B row `b_start + k`). In steps mode there is one segment
from row 0; align mode gives one per matched block. Each segment is read in
chunks of at most `CHUNK_ROWS` rows per side (row groups are read once and
cached while a chunk spans them), and each column of a chunk is compared with
one numpy or pyarrow operation, so the cost is a few passes over the column
buffers and memory stays bounded by a couple of row groups, whatever the
trace length.

Shortcut: where a segment pairs rows of equal step numbers (steps mode, or
the common prefix of align mode), a row group that holds the same rows in
both files and whose column chunks are byte-identical (compressed pages,
dictionary included) holds identical values and is skipped without decoding.
Identical bytes prove equality; different bytes prove nothing, and those
groups are decoded and compared. A trace compared with its
golden is typically identical up to the change, so this is most of the file.

In align mode a `translate` function maps every 64-bit value of A that points
into A's code onto the matching address in B before comparing, so code that
moved because an instruction was inserted compares equal (see `align.py`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..arch import REGISTERS, WORD
from ..trace.arrays import arrow_indices, numpy_of
from ..trace.format import FACT_COLUMNS, STACK_PREFIX
from ..trace.reader import Trace

CHUNK_ROWS = 16384  # rows per comparison when chunks cannot follow row groups

U64 = npt.NDArray[np.uint64]
Mask = npt.NDArray[np.bool_]
Translate = Callable[[U64], U64]


@dataclass(frozen=True)
class Segment:
    """`length` rows paired one to one: A row `a_start + k` against B row `b_start + k`."""

    a_start: int
    b_start: int
    length: int


def paired_rows(
    segments: Sequence[Segment],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Every paired row of the segments: (A rows, B rows), in order, without a Python loop."""
    if not segments:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    lengths = np.array([s.length for s in segments], dtype=np.int64)
    starts_a = np.array([s.a_start for s in segments], dtype=np.int64)
    starts_b = np.array([s.b_start for s in segments], dtype=np.int64)
    # Position of each row within its segment: 0, 1, ... restarting at each segment.
    within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(
        np.cumsum(lengths) - lengths, lengths
    )
    return np.repeat(starts_a, lengths) + within, np.repeat(starts_b, lengths) + within


def group_starts(trace: Trace) -> list[int]:
    """First row of each row group, and the row count at the end."""
    meta = trace.parquet.metadata
    starts = [0]
    for index in range(trace.num_row_groups):
        starts.append(starts[-1] + meta.row_group(index).num_rows)
    return starts


class RawChunks:
    """The compressed bytes of column chunks, to prove a row group unchanged cheaply."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        meta = trace.parquet.metadata
        # A nested column (reads, writes) is several leaf columns in the file.
        self._leaves: dict[str, list[int]] = {}
        for j in range(meta.num_columns):
            top = meta.schema.column(j).path.split(".")[0]
            self._leaves.setdefault(top, []).append(j)

    def read(self, group: int, column: str) -> list[bytes]:
        meta = self.trace.parquet.metadata.row_group(group)
        out = []
        with open(self.trace.path, "rb") as handle:
            for j in self._leaves.get(column, []):
                chunk = meta.column(j)
                start = (
                    chunk.dictionary_page_offset
                    if chunk.has_dictionary_page
                    else chunk.data_page_offset
                )
                handle.seek(start)
                out.append(handle.read(chunk.total_compressed_size))
        return out


def _unchanged(raw_a: RawChunks, raw_b: RawChunks, group: int, columns: Sequence[str]) -> bool:
    return all(raw_a.read(group, c) == raw_b.read(group, c) for c in columns)


def _chunks(
    segment: Segment, starts: list[int] | None, shared: set[int], chunk_rows: int
) -> Iterator[tuple[int, int, int | None]]:
    """(offset, rows, row group index or None) covering the segment.

    With `starts` (A's row groups; the segment pairs equal step numbers) chunks
    follow A's row groups, and a chunk that is a whole group in `shared` (the
    same rows form one group in B too) comes with its index, so that it can be
    proved unchanged from the raw bytes.
    """
    end = segment.a_start + segment.length
    if starts is None:
        for offset in range(0, segment.length, chunk_rows):
            yield offset, min(chunk_rows, segment.length - offset), None
        return
    for group in range(len(starts) - 1):
        lo, hi = max(starts[group], segment.a_start), min(starts[group + 1], end)
        if lo >= hi:
            continue
        whole = (lo, hi) == (starts[group], starts[group + 1]) and group in shared
        yield lo - segment.a_start, hi - lo, group if whole else None


class RowCursor:
    """Reads row ranges of one trace, keeping the last row groups it read.

    Chunks of a forward scan rarely line up with row groups (the two traces may
    have different row group sizes, and align mode shifts one side), so a chunk
    can span two groups; the cache makes each group decode once per scan.
    """

    def __init__(self, trace: Trace, columns: Sequence[str], keep_all: bool = False) -> None:
        self.trace = trace
        self.keep_all = keep_all  # for a few scattered reads instead of one forward scan
        self.columns = list(columns)
        self._starts = group_starts(trace)
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
        for stale in [i for i in self._cache if i < first and not self.keep_all]:
            del self._cache[stale]
        if len(pieces) == 1:
            return pieces[0]
        return pa.concat_tables(pieces)


def compared_columns(a: Trace, b: Trace, ignore: Iterable[str]) -> list[str]:
    """Columns present in both traces that are compared row by row, in file order.

    The per-instruction fact columns (kind, label, offset, insn_bytes,
    source) are not: they follow from rip and the metadata, whose code,
    symbols and source are compared on their own, and `insn` and `symbol`
    already show a changed instruction row by row. Compared, `source` would
    make an edited comment above the code a divergence at step 0.
    """
    ignored = {*ignore, *FACT_COLUMNS}
    names_b = set(b.column_names)
    return [n for n in a.column_names if n in names_b and n != "step" and n not in ignored]


@dataclass
class ScanResult:
    """Per column: how many paired rows differ and the first such pair."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, tuple[int, int]] = field(default_factory=dict)

    def first_pair(self) -> tuple[int, int] | None:
        return min(self.first.values(), default=None)


def for_rip(translate: Translate | None) -> Translate | None:
    """The translation for `rip` itself: where A's instruction runs in B.

    It differs from the one for values only at a label whose first instruction
    moved (see `AddressMap`): a value there points to the label, rip there is
    the instruction.
    """
    executed: Translate | None = getattr(translate, "executed", None)
    return executed if executed is not None else translate


class Comparator:
    """Compares the same columns of two equally long tables, one mask per column."""

    def __init__(self, columns: Sequence[str], translate: Translate | None = None) -> None:
        self.columns = list(columns)
        self.translate = translate

    def masks(self, a: pa.Table, b: pa.Table) -> dict[str, Mask]:
        out: dict[str, Mask] = {}
        for name in self.columns:
            col_a, col_b = a.column(name), b.column(name)
            if name == "rip":
                out[name] = self._registers(col_a, col_b, for_rip(self.translate))
            elif name in REGISTERS:
                out[name] = self._registers(col_a, col_b, self.translate)
            elif name in ("reads", "writes"):
                out[name] = access_mask(col_a, col_b, self.translate)
            elif name.startswith(STACK_PREFIX):
                out[name] = self._stack(col_a, col_b)
            elif name == "syscall":
                out[name] = syscall_mask(col_a, col_b, self.translate)
            else:
                out[name] = text_mask(col_a, col_b)
        return out

    @staticmethod
    def _registers(
        col_a: pa.ChunkedArray, col_b: pa.ChunkedArray, translate: Translate | None
    ) -> Mask:
        values_a: U64 = numpy_of(col_a)
        values_b: U64 = numpy_of(col_b)
        if translate is not None:
            values_a = translate(values_a)
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


def single(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One array for a column; no copy when it is one chunk (the usual case)."""
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def fixed_bytes(column: pa.ChunkedArray | pa.Array) -> npt.NDArray[np.uint8]:
    """A fixed_size_binary(N) column as a (rows, N) uint8 array (no copy if one chunk)."""
    array = single(column)
    width = array.type.byte_width
    buffer = array.buffers()[1]
    if buffer is None or len(array) == 0:
        return np.zeros((len(array), width), dtype=np.uint8)
    flat = np.frombuffer(buffer, dtype=np.uint8)
    start = array.offset * width
    return flat[start : start + len(array) * width].reshape(len(array), width)


def text_mask(col_a: pa.ChunkedArray, col_b: pa.ChunkedArray) -> Mask:
    """Rows where two string (or dictionary-encoded string) columns differ."""
    a, b = single(col_a), single(col_b)
    if (
        isinstance(a, pa.DictionaryArray)
        and isinstance(b, pa.DictionaryArray)
        and a.dictionary.equals(b.dictionary)
    ):
        # Same dictionary (the usual case: same program): compare the indices.
        same_dict: Mask = numpy_of(a.indices) != numpy_of(b.indices)
        return same_dict
    a = a.cast(pa.string()) if isinstance(a, pa.DictionaryArray) else a
    b = b.cast(pa.string()) if isinstance(b, pa.DictionaryArray) else b
    decoded: Mask = numpy_of(pc.not_equal(a, b))
    return decoded


def syscall_mask(
    col_a: pa.ChunkedArray, col_b: pa.ChunkedArray, translate: Translate | None = None
) -> Mask:
    """Rows where one side made a system call and the other did not, or the calls differ.

    Calls are rare (a row in thousands), so the rows where both made one are
    compared as Python values; A's arguments translated into B's addresses,
    as registers are (a `write` of a string in code that moved)."""
    a, b = single(col_a), single(col_b)
    made_a = numpy_of(pc.is_valid(a))
    made_b = numpy_of(pc.is_valid(b))
    differ: Mask = made_a != made_b
    both = np.flatnonzero(made_a & made_b)
    if len(both):
        rows = arrow_indices(both)
        calls_a = a.take(rows).to_pylist()
        if translate is not None:
            for call in calls_a:
                args = np.array(call["args"], dtype=np.uint64)
                call["args"] = translate(args).tolist()
        pairs = zip(calls_a, b.take(rows).to_pylist(), strict=True)
        differ[both] = [call_a != call_b for call_a, call_b in pairs]
    return differ


def access_mask(
    col_a: pa.ChunkedArray | pa.Array,
    col_b: pa.ChunkedArray | pa.Array,
    translate: Translate | None = None,
) -> Mask:
    """Rows whose `reads` (or `writes`) lists differ in length, address, size or data."""
    a, b = single(col_a), single(col_b)
    len_a = numpy_of(pc.list_value_length(a))
    len_b = numpy_of(pc.list_value_length(b))
    differ: Mask = len_a != len_b
    rows: npt.NDArray[np.int64] | None = None
    if differ.any():
        # Entries only line up where both lists are equally long: compare those rows.
        rows = np.flatnonzero(~differ)
        a, b = a.take(arrow_indices(rows)), b.take(arrow_indices(rows))
    flat_a, flat_b = pc.list_flatten(a), pc.list_flatten(b)
    if len(flat_a) == 0:
        return differ
    parents = numpy_of(pc.list_parent_indices(a))
    entry = entry_mask(flat_a, flat_b, translate)
    hit = parents[entry]
    differ[rows[hit] if rows is not None else hit] = True
    return differ


def entry_mask(flat_a: pa.Array, flat_b: pa.Array, translate: Translate | None) -> Mask:
    """Per access entry (struct addr, size, data): whether the two sides differ."""
    addr_a, size_a, data_a = flat_a.flatten()
    addr_b, size_b, data_b = flat_b.flatten()
    addrs_a: U64 = numpy_of(addr_a)
    if translate is not None:
        addrs_a = translate(addrs_a)
    differ: Mask = addrs_a != numpy_of(addr_b)
    differ |= numpy_of(size_a) != numpy_of(size_b)
    data_differ: Mask = numpy_of(pc.not_equal(data_a, data_b))
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
    lengths: npt.NDArray[np.int64] = numpy_of(pc.binary_length(array)).astype(np.int64)
    return lengths


def words_of(array: pa.Array, where: npt.NDArray[np.int64]) -> U64:
    """The little-endian uint64 values of the 8-byte entries `where` of a binary array."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset :]
    values = np.frombuffer(array.buffers()[2], dtype=np.uint8)
    starts = offsets[where].astype(np.int64)
    gathered = values[starts[:, None] + np.arange(WORD)]
    words: U64 = np.ascontiguousarray(gathered).view("<u8").reshape(-1)
    return words


def column_families(columns: Sequence[str]) -> list[list[str]]:
    """Columns read together: registers (small) as one, every other column alone.

    Scanning one family at a time bounds memory by the largest column's chunk
    (a 512-byte stack window is 32 MB per 65536 rows) instead of all of them.
    """
    registers = [c for c in columns if c in REGISTERS]
    others = [[c] for c in columns if c not in REGISTERS]
    return ([registers] if registers else []) + others


def scan(
    a: Trace,
    b: Trace,
    segments: Sequence[Segment],
    columns: Sequence[str],
    translate: Translate | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> ScanResult:
    """Compare every paired row of the segments, column by column, chunk by chunk."""
    result = ScanResult(counts=dict.fromkeys(columns, 0))
    starts, starts_b = group_starts(a), group_starts(b)
    # Row groups holding the same rows in both files (with the recorder's fixed
    # group size: all but a last, shorter one when the lengths differ).
    shared = {
        g
        for g in range(min(len(starts), len(starts_b)) - 1)
        if starts[g : g + 2] == starts_b[g : g + 2]
    }
    raw_a, raw_b = RawChunks(a), RawChunks(b)
    for family in column_families(columns):
        comparator = Comparator(family, translate)
        cursor_a, cursor_b = RowCursor(a, family), RowCursor(b, family)
        for batch in _batches(segments, chunk_rows):
            if len(batch) > 1:
                _scan_gathered(batch, cursor_a, cursor_b, comparator, result)
                continue
            segment = batch[0]
            aligned = segment.a_start == segment.b_start
            for offset, n, group in _chunks(
                segment, starts if aligned else None, shared, chunk_rows
            ):
                if group is not None and _unchanged(raw_a, raw_b, group, family):
                    continue
                start_a, start_b = segment.a_start + offset, segment.b_start + offset
                chunk_a = cursor_a.read(start_a, start_a + n)
                chunk_b = cursor_b.read(start_b, start_b + n)
                _tally(comparator.masks(chunk_a, chunk_b), _offset_rows(start_a, start_b), result)
    result.counts = {name: n for name, n in result.counts.items() if n}
    return result


def _batches(segments: Sequence[Segment], chunk_rows: int) -> Iterator[list[Segment]]:
    """Consecutive short segments grouped so that each group spans at most `chunk_rows`.

    Align mode on two loops that differ in every iteration gives thousands of
    segments of a few dozen rows: compared one by one, each would cost a read
    and a comparison of its own. A group is read as one range per side and its
    paired rows gathered with `take`. A long segment stays alone (and keeps
    the row group shortcut).
    """
    batch: list[Segment] = []
    for segment in segments:
        if batch:
            first = batch[0]
            span_a = segment.a_start + segment.length - first.a_start
            span_b = segment.b_start + segment.length - first.b_start
            if max(span_a, span_b) > chunk_rows:
                yield batch
                batch = []
        if segment.length >= chunk_rows:
            if batch:
                yield batch
                batch = []
            yield [segment]
            continue
        batch.append(segment)
    if batch:
        yield batch


def _scan_gathered(
    batch: Sequence[Segment],
    cursor_a: RowCursor,
    cursor_b: RowCursor,
    comparator: Comparator,
    result: ScanResult,
) -> None:
    lo_a, lo_b = batch[0].a_start, batch[0].b_start
    hi_a = batch[-1].a_start + batch[-1].length
    hi_b = batch[-1].b_start + batch[-1].length
    rows_a, rows_b = paired_rows(batch)
    chunk_a = cursor_a.read(lo_a, hi_a).take(arrow_indices(rows_a - lo_a))
    chunk_b = cursor_b.read(lo_b, hi_b).take(arrow_indices(rows_b - lo_b))
    _tally(
        comparator.masks(chunk_a, chunk_b),
        lambda k: (int(rows_a[k]), int(rows_b[k])),
        result,
    )


def _offset_rows(start_a: int, start_b: int) -> Callable[[int], tuple[int, int]]:
    """Rows of a chunk read from `start_a` in A and `start_b` in B, row for row."""
    return lambda k: (start_a + k, start_b + k)


def _tally(
    masks: dict[str, Mask], rows_at: Callable[[int], tuple[int, int]], result: ScanResult
) -> None:
    """Add each column's differing rows to `result`, keeping the first pair of
    rows (A's, B's) where it differs: `rows_at(k)` for the masks' position k."""
    for name, mask in masks.items():
        count = int(np.count_nonzero(mask))
        if count:
            result.counts[name] += count
            if name not in result.first:
                result.first[name] = rows_at(int(np.argmax(mask)))
