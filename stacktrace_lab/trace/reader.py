"""Reading a trace: metadata as typed objects, rows by column or by row group.

`load_trace` checks that the file is a trace of a version this code reads and
refuses anything else with a one-line `BadInput`. Row data is read lazily, so
analysing a long trace can go column by column or row group by row group
without holding the whole file in memory.

Every table a `Trace` hands out has the current format's columns and types,
whatever wrote the file:
- a version 1 trace gets the per-instruction fact columns (`kind`, `label`,
  `offset`, `insn_bytes`, `source`) derived from its code and symbols, on read;
- a file rewritten by another Parquet tool (pyarrow, polars) may come back
  with plain strings for dictionary columns, large lists and binaries, and
  variable-width binaries for the stack snapshots: they are cast back (a
  snapshot of the wrong width is a corrupt trace).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BadInput
from . import validate
from .arrays import numeric, numpy_of
from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_KEY,
    READABLE_VERSIONS,
    SYSCALL_FIELD,
    THREAD_FIELD,
    SyscallRecord,
    TraceMetadata,
    schema,
    syscall_column,
    syscalls_in,
)

if TYPE_CHECKING:
    from ..disassembly import InstructionTable

if TYPE_CHECKING:  # pandas costs ~0.3 s to import: only `rows()` needs it, at run time
    import pandas as pd


class Trace:
    def __init__(self, path: Path, parquet: pq.ParquetFile, metadata: TraceMetadata) -> None:
        self.path = path
        self.parquet = parquet
        self.metadata = metadata
        #: The columns and types every table of this trace is handed out with.
        self.schema = _presented_schema(parquet.schema_arrow, metadata)
        self._stored = set(parquet.schema_arrow.names)
        self._facts: InstructionTable | None = None  # version 1: derives FACT_COLUMNS

    @property
    def num_rows(self) -> int:
        return int(self.parquet.metadata.num_rows)

    @property
    def column_names(self) -> list[str]:
        return list(self.schema.names)

    @property
    def num_row_groups(self) -> int:
        return int(self.parquet.num_row_groups)

    def table(self, columns: Sequence[str] | None = None) -> pa.Table:
        names = self._names(columns)
        with self._reading():
            table = self.parquet.read(columns=self._to_read(names))
        return self._present(table, names)

    def rows(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The rows as a DataFrame (all columns unless named: mind long traces).

        Needs pandas, an extra (84 MB for this one method): `pip install
        'stacktrace-lab[pandas]'`. `table()` gives the same rows as Arrow.
        """
        try:
            import pandas  # noqa: F401  (pyarrow's to_pandas imports it itself)
        except ImportError:
            raise ModuleNotFoundError(
                "Trace.rows() needs pandas: pip install 'stacktrace-lab[pandas]' "
                "(or use Trace.table(), the same rows as an Arrow table)",
                name="pandas",
            ) from None
        frame: pd.DataFrame = self.table(columns).to_pandas()
        return frame

    def column(self, name: str) -> npt.NDArray[np.uint64]:
        """A register column (or `step`) as a numpy array."""
        values: npt.NDArray[np.uint64] = numpy_of(self.table([name]).column(0))
        return values

    def row_group(self, index: int, columns: Sequence[str] | None = None) -> pa.Table:
        names = self._names(columns or None)
        with self._reading():
            table = self.parquet.read_row_group(index, columns=self._to_read(names))
        return self._present(table, names)

    def row_group_batches(
        self, index: int, columns: Sequence[str] | None = None, rows: int = 8192
    ) -> Iterator[pa.Table]:
        """Row group `index` as tables of `rows` rows at most, in order: the stack
        snapshot columns decoded a batch at a time, never a whole row group's at once
        (512-byte windows of two stacks are 64 MiB per 65,536-row group)."""
        names = self._names(columns or None)
        with self._reading():
            batches = self.parquet.iter_batches(
                batch_size=rows, row_groups=[index], columns=self._to_read(names)
            )
            for batch in batches:
                yield self._present(pa.Table.from_batches([batch]), names)

    def iter_row_groups(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        for index in range(self.num_row_groups):
            yield self.row_group(index, columns)

    def syscalls(self) -> list[SyscallRecord]:
        """Every system call the program made, in order (from the `syscall` column,
        read group by group; a version 2 trace's from its metadata)."""
        if "syscall" not in self._stored:
            return list(self.metadata.syscalls)
        found: list[SyscallRecord] = []
        for group in self.iter_row_groups(["step", "syscall"]):
            found += syscalls_in(group.column("step"), group.column("syscall"))
        return found

    def slice(self, start: int, stop: int, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows `start ..< stop`, reading only the row groups that hold them."""
        pieces = []
        offset = 0
        for index in range(self.num_row_groups):
            n = self.parquet.metadata.row_group(index).num_rows
            if offset + n > start and offset < stop:
                group = self.row_group(index, columns)
                lo = max(start - offset, 0)
                hi = min(stop - offset, n)
                pieces.append(group.slice(lo, hi - lo))
            offset += n
            if offset >= stop:
                break
        if not pieces:
            return self.schema.empty_table().select(self._names(columns or None))
        return pa.concat_tables(pieces)

    def value_at(self, step: int, column: str) -> Any:
        """Row `step`'s value in `column`, as Python; decoding its row group a batch
        of rows at a time up to that row. A `slice` of one row decodes the column of
        its whole row group at once: 32 MiB for a 512-byte snapshot window."""
        offset = 0
        for index in range(self.num_row_groups if step >= 0 else 0):
            n = self.parquet.metadata.row_group(index).num_rows
            if step < offset + n:
                for batch in self.row_group_batches(index, [column], _VALUE_BATCH):
                    if step < offset + batch.num_rows:
                        return batch.column(0)[step - offset].as_py()
                    offset += batch.num_rows
            offset += n
        raise IndexError(f"{self.path}: no step {step} (the trace has {self.num_rows} rows)")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Damaged pages are found only when read (validation reads the footer):
        one line naming the file, as for any other bad trace."""
        try:
            yield
        except (OSError, pa.ArrowException) as exc:
            first = (str(exc).splitlines() or ["unreadable"])[0]
            raise BadInput(f"{self.path}: corrupt trace (cannot read its rows: {first})") from None

    def _names(self, columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return self.column_names
        unknown = [name for name in columns if name not in self.schema.names]
        if unknown:
            raise KeyError(f"{self.path}: no column {unknown[0]!r} in this trace")
        return list(columns)

    def _to_read(self, names: list[str]) -> list[str]:
        """The stored columns needed for `names` (derived facts need rip)."""
        stored = [name for name in names if name in self._stored]
        derived = [name for name in names if name not in self._stored]
        if any(name not in _NOT_FROM_RIP for name in derived) and "rip" not in stored:
            stored.append("rip")
        if any(name in _NOT_FROM_RIP for name in derived) and "step" not in stored:
            stored.append("step")
        return stored

    def _present(self, table: pa.Table, names: list[str]) -> pa.Table:
        """`table` (as read) with the derived columns added, every column cast to its type."""
        if not names:
            return table  # no columns, but the row count
        derived: dict[str, pa.Array] = {}
        if any(name not in self._stored and name not in _NOT_FROM_RIP for name in names):
            derived = self._derive(table.column("rip"))
        if "syscall" in names and "syscall" not in self._stored:
            derived["syscall"] = self._derive_syscalls(table.column("step"))
        if "thread" in names and "thread" not in self._stored:
            # Before version 4 a trace had one thread. (From the buffer: `pa.array`
            # would import pandas, 0.35 CPU s and 51 MiB of every reading command.)
            derived["thread"] = numeric(np.ones(table.num_rows, dtype=np.uint16), pa.uint16())
        arrays = []
        for name in names:
            field = self.schema.field(name)
            column = derived[name] if name in derived else table.column(name)
            column = _cast(self.path, column, field.type, name)
            if pa.types.is_dictionary(field.type) and name not in derived:
                _check_text(self.path, column, name)
            arrays.append(column)
        return pa.Table.from_arrays(arrays, schema=pa.schema([self.schema.field(n) for n in names]))

    def _derive(self, rips: pa.ChunkedArray) -> dict[str, pa.Array]:
        """The fact columns of a version 1 trace, from its code, symbols and lines."""
        if self._facts is None:
            # Capstone lives on the recorder side; only version 1 traces need it here.
            from ..disassembly import Disassembler, InstructionTable

            meta = self.metadata
            self._facts = InstructionTable(
                Disassembler(meta.code, meta.code_base, meta.symbols), meta.source_line
            )
        rip = rips.combine_chunks() if isinstance(rips, pa.ChunkedArray) else rips
        return self._facts.columns(numpy_of(rip))

    def _derive_syscalls(self, steps: pa.ChunkedArray) -> pa.Array:
        """The `syscall` column of a version 1 or 2 trace, from its metadata's list."""
        first = steps[0].as_py() if len(steps) else 0
        calls = [c for c in self.metadata.syscalls if first <= c.step < first + len(steps)]
        return syscall_column(calls, first, len(steps))


#: Derived columns of older traces that are not facts about the instruction at rip.
_NOT_FROM_RIP = ("syscall", "thread")


class _ParquetFile(pq.ParquetFile):  # type: ignore[misc]  # pyarrow has no types
    """A Parquet file whose Arrow schema is decoded once: pyarrow decodes it from
    the footer at each `schema_arrow` (the stored schema carries the metadata
    too, 0.5 MB for a dynamically linked program: 3-4 ms a time), and opening a
    trace asks four times."""

    @functools.cached_property
    def schema_arrow(self) -> pa.Schema:
        return super().schema_arrow


#: Rows per batch of `Trace.value_at` (4 MiB of a 512-byte snapshot window).
_VALUE_BATCH = 8192


def _use_a_returning_memory_pool() -> None:
    """Read with jemalloc's pool where pyarrow has it (the Linux and macOS wheels do).

    pyarrow's default pool on Linux is mimalloc, which keeps the pages of the row
    groups a reading command has decoded and freed: about 50 MiB resident after one
    pass over a ten-million-step trace, against a few MiB for jemalloc, at the same
    CPU (docs/performance.md, "Bounded memory, fourth pass"). A pool the user chose
    with `ARROW_DEFAULT_MEMORY_POOL` is left alone.
    """
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    with contextlib.suppress(NotImplementedError):  # a build without jemalloc
        pool = pa.jemalloc_memory_pool()
        if pa.default_memory_pool().backend_name != pool.backend_name:
            pa.set_memory_pool(pool)


def load_trace(path: str | Path) -> Trace:
    _use_a_returning_memory_pool()
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    if path.is_dir():
        raise BadInput(f"{path}: is a directory, not a trace file")
    if not path.is_file():
        # A FIFO would block the reader forever, a device never end: refused at once.
        raise BadInput(f"{path}: not a regular file (a FIFO, socket or device); not a trace file")
    try:
        parquet = _ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise BadInput(
            f"{path}: not a stacktrace-lab trace (unreadable as Parquet: {exc})"
        ) from None
    # The Parquet key-value metadata; else the Arrow schema's (a file written
    # again by a tool that only kept the latter).
    raw = (parquet.metadata.metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raw = (parquet.schema_arrow.metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raise BadInput(f"{path}: not a stacktrace-lab trace (no '{METADATA_KEY}' metadata)")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadInput(f"{path}: corrupt trace metadata (not JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise BadInput(f"{path}: not a stacktrace-lab trace (format {found!r})")
    version = doc.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        # A newer version may have changed the layout of the metadata: say so first.
        raise _newer(path, version)
    validate.check_doc(path, doc)
    try:
        metadata = TraceMetadata.from_doc(doc)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise BadInput(f"{path}: corrupt trace metadata ({exc!r})") from None
    if metadata.format != FORMAT_NAME:
        raise BadInput(f"{path}: not a stacktrace-lab trace (format {metadata.format!r})")
    if metadata.version > FORMAT_VERSION:
        raise _newer(path, metadata.version)
    if metadata.version not in READABLE_VERSIONS:
        raise BadInput(f"{path}: corrupt trace metadata (version {metadata.version})")
    validate.check_rows(path, parquet, schema(metadata.snapshots, metadata.version), metadata.steps)
    return Trace(path, parquet, metadata)


def _presented_schema(stored: pa.Schema, metadata: TraceMetadata) -> pa.Schema:
    """The current format's schema, plus any extra columns the file has, without metadata."""
    canonical = schema({}, version=2)
    snapshots = {
        w.column: pa.field(w.column, pa.binary(w.size), nullable=False)
        for w in metadata.snapshots.values()
    }
    # Stack columns in the file's order (the metadata's JSON keys are sorted).
    stacks = [snapshots[name] for name in stored.names if name in snapshots]
    known = {*canonical.names, *snapshots, SYSCALL_FIELD.name, THREAD_FIELD.name}
    extra = [stored.field(name) for name in stored.names if name not in known]
    return pa.schema([*canonical, *stacks, SYSCALL_FIELD, THREAD_FIELD, *extra])


def _cast(
    path: Path, column: pa.Array | pa.ChunkedArray, to: pa.DataType, name: str
) -> pa.Array | pa.ChunkedArray:
    if column.type.equals(to):
        return column
    try:
        if pa.types.is_fixed_size_binary(to) and pa.types.is_dictionary(column.type):
            return _expand_snapshots(column, to)
        if pa.types.is_dictionary(to) and not pa.types.is_dictionary(column.type):
            column = column.cast(pa.string())  # string views have no direct cast
        return column.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BadInput(f"{path}: corrupt trace (column {name}: {exc})") from None


def _expand_snapshots(
    column: pa.Array | pa.ChunkedArray, to: pa.DataType
) -> pa.Array | pa.ChunkedArray:
    """A format-5 snapshot column (a dictionary of binaries) as `to`, fixed-width rows:
    the few distinct versions are cast (which checks their width), then gathered."""

    def expand(chunk: pa.DictionaryArray) -> pa.Array:
        return chunk.dictionary.cast(to).take(chunk.indices)

    if isinstance(column, pa.ChunkedArray):
        return pa.chunked_array([expand(chunk) for chunk in column.chunks], type=to)
    return expand(column)


def _check_text(path: Path, column: pa.ChunkedArray, name: str) -> None:
    """A text column's dictionary is valid UTF-8 and its indices point into it:
    Parquet's reader leaves both unchecked, and a damaged page would otherwise
    fail deep inside the analysis (`UnicodeDecodeError`). The dictionaries are
    small (one entry per distinct instruction), so this is cheap."""
    try:
        for chunk in column.chunks:
            chunk.validate(full=True)
    except pa.ArrowInvalid as exc:
        first = (str(exc).splitlines() or ["invalid"])[0]
        raise BadInput(f"{path}: corrupt trace (column {name}: {first})") from None


def _newer(path: Path, version: int) -> BadInput:
    return BadInput(
        f"{path}: trace format version {version} is newer than this stacktrace-lab reads "
        f"({FORMAT_VERSION}); upgrade stacktrace-lab"
    )
