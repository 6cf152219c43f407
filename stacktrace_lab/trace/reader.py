"""Reading a trace: metadata as typed objects, rows by column or by row group.

`load_trace` checks that the file is a trace of a version this code reads and
refuses anything else with a one-line `BadInput`. Row data is read lazily, so
analysing a long trace can go column by column or row group by row group
without holding the whole file in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BadInput
from . import validate
from .format import FORMAT_NAME, FORMAT_VERSION, METADATA_KEY, TraceMetadata, schema


class Trace:
    def __init__(self, path: Path, parquet: pq.ParquetFile, metadata: TraceMetadata) -> None:
        self.path = path
        self.parquet = parquet
        self.metadata = metadata

    @property
    def num_rows(self) -> int:
        return int(self.parquet.metadata.num_rows)

    @property
    def column_names(self) -> list[str]:
        return list(self.parquet.schema_arrow.names)

    @property
    def num_row_groups(self) -> int:
        return int(self.parquet.num_row_groups)

    def table(self, columns: Sequence[str] | None = None) -> pa.Table:
        return self.parquet.read(columns=list(columns) if columns is not None else None)

    def rows(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The rows as a DataFrame (all columns unless named: mind long traces)."""
        frame: pd.DataFrame = self.table(columns).to_pandas()
        return frame

    def column(self, name: str) -> npt.NDArray[np.uint64]:
        """A register column (or `step`) as a numpy array."""
        values: npt.NDArray[np.uint64] = self.parquet.read(columns=[name]).column(0).to_numpy()
        return values

    def row_group(self, index: int, columns: Sequence[str] | None = None) -> pa.Table:
        return self.parquet.read_row_group(index, columns=list(columns) if columns else None)

    def iter_row_groups(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        for index in range(self.num_row_groups):
            yield self.row_group(index, columns)

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
            return self.parquet.schema_arrow.empty_table().select(
                list(columns) if columns else self.column_names
            )
        return pa.concat_tables(pieces)


def load_trace(path: str | Path) -> Trace:
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    if path.is_dir():
        raise BadInput(f"{path}: is a directory, not a trace file")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise BadInput(
            f"{path}: not a stacktrace-lab trace (unreadable as Parquet: {exc})"
        ) from None
    raw = (parquet.metadata.metadata or {}).get(METADATA_KEY.encode())
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
        metadata = TraceMetadata.from_json(raw)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise BadInput(f"{path}: corrupt trace metadata ({exc!r})") from None
    validate.check_rows(path, parquet, schema(metadata.snapshots), metadata.steps)
    return Trace(path, parquet, metadata)


def _newer(path: Path, version: int) -> BadInput:
    return BadInput(
        f"{path}: trace format version {version} is newer than this stacktrace-lab reads "
        f"({FORMAT_VERSION}); upgrade stacktrace-lab"
    )
