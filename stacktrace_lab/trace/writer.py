"""Writing a trace: row groups streamed to a temporary file, renamed into place at the end.

A record that fails or is interrupted leaves no file that looks whole: the
temporary file is removed, and the target path is only ever replaced by a
complete trace.

The metadata is only complete at the end (final registers, stop reason), but
Arrow fixes the schema it stores in the file (the `ARROW:schema` key, which
table-level readers take their schema metadata from) when the writer opens.
So the writer opens without storing a schema and, at commit, adds both keys
itself: the metadata JSON and the serialized Arrow schema carrying that JSON.
It costs one small footer entry, no second pass over the rows.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.parquet as pq

from .. import safe_output
from ..errors import BadInput
from .format import METADATA_KEY, TraceMetadata

_FOOTER_BYTES_PER_CHUNK = 100

#: Where Parquet files written by Arrow keep their Arrow schema (base64 of
#: the IPC-serialized schema): dictionary types, and the schema's metadata.
ARROW_SCHEMA_KEY = "ARROW:schema"


#: Columns written with delta encoding instead of a dictionary.
_DELTA = frozenset({"step"})
#: Leaves written PLAIN (then zstd) instead of with a dictionary: the bytes of
#: memory events are mostly distinct (pushed return addresses, saved registers),
#: so a dictionary hashes every entry to store nearly all of them again.
_PLAIN = frozenset({"reads.list.element.data", "writes.list.element.data"})


def _leaves(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    """The Parquet column paths of `schema`'s leaves (`writes.list.element.addr`),
    the names Parquet's per-column options go by, with their Arrow types."""

    def leaves(prefix: str, kind: pa.DataType) -> list[tuple[str, pa.DataType]]:
        if pa.types.is_struct(kind):
            return [p for f in kind for p in leaves(f"{prefix}.{f.name}", f.type)]
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            return leaves(f"{prefix}.list.element", kind.value_type)
        return [(prefix, kind)]

    return [leaf for field in schema for leaf in leaves(field.name, field.type)]


def _encodings(schema: pa.Schema) -> tuple[list[str], dict[str, str]]:
    """Which leaves are dictionary encoded, and the encoding of each other one.

    - `step` counts 0, 1, 2, ...: DELTA_BINARY_PACKED stores it in a few bits per
      row group, where a dictionary of distinct values cost more than half the
      file (2.9 of 5.2 bytes per step).
    - Other integers (registers, offsets, event addresses and sizes, thread):
      BYTE_STREAM_SPLIT (format 5), then zstd. Measured against a dictionary
      on three traces (call-heavy, the C example, green-threads), registers
      were 1.3-2.6x faster to encode and 10-60 % smaller: a dictionary hashes
      every value, and its indices of high-entropy registers compress worse
      than the values' own bytes, grouped by significance.
    - Event data (`reads`/`writes` `data`): PLAIN, then zstd. Against a
      dictionary on call-heavy: 0.26 -> 0.15 B/row for `writes`, 0.15 -> 0.10
      for `reads`, and the whole writer 3-4 % faster.
    - Other strings and binaries (text, instruction bytes, snapshot versions):
      a dictionary, as before.
    """
    dictionary, other = [], {}
    for path, kind in _leaves(schema):
        if path in _DELTA:
            other[path] = "DELTA_BINARY_PACKED"
        elif path in _PLAIN:
            other[path] = "PLAIN"
        elif pa.types.is_integer(kind):
            other[path] = "BYTE_STREAM_SPLIT"
        else:
            dictionary.append(path)
    return dictionary, other


class TraceWriter:
    def __init__(self, path: str | Path, schema: pa.Schema) -> None:
        self.path = Path(path)
        safe_output.check_target(self.path)  # regular files only: never a device or FIFO
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._temp = safe_output.create_temp(self.path)
        except OSError as exc:
            raise BadInput(f"{self.path}: cannot write: {exc.strerror}") from None
        self.schema = schema
        self._committed = False
        self._row_groups = 0
        self._writer: pq.ParquetWriter | None = None
        try:
            self._writer = self._open(schema)
        except BaseException:
            safe_output.discard_temp(self._temp)
            raise

    def _open(self, schema: pa.Schema) -> pq.ParquetWriter:
        dictionary, encodings = _encodings(schema)
        return pq.ParquetWriter(
            self._temp,
            schema,
            compression="zstd",
            # Stack snapshots repeat a lot: with room for a dictionary of a
            # whole row group's distinct values they stay dictionary encoded,
            # which makes files smaller and reading several times faster.
            use_dictionary=dictionary,
            column_encoding=encodings,
            dictionary_pagesize_limit=64 << 20,
            write_statistics=["step", "rip", "rsp"],
            store_schema=False,  # stored at commit, with the metadata (see above)
        )

    @property
    def bytes_written(self) -> int:
        """Bytes of the trace so far: the row groups on disk, and their entries in
        the footer, written at the end (measured: under 100 bytes per column chunk)."""
        try:
            on_disk = self._temp.stat().st_size
        except OSError:
            on_disk = 0
        return on_disk + self._row_groups * len(self.schema) * _FOOTER_BYTES_PER_CHUNK

    def write(self, batch: pa.RecordBatch) -> None:
        assert self._writer is not None
        self._row_groups += 1
        try:
            self._writer.write_batch(batch, row_group_size=batch.num_rows)
        except OSError as exc:
            raise safe_output.write_error(self.path, exc) from None

    def commit(self, metadata: TraceMetadata, check: Callable[[Path], None] | None = None) -> Path:
        """`check`: called with the complete temporary file before it is put in place;
        what it raises leaves nothing behind."""
        assert self._writer is not None
        text = metadata.to_json()
        arrow_schema = self.schema.with_metadata({METADATA_KEY: text})
        try:
            self._writer.add_key_value_metadata(
                {
                    METADATA_KEY: text,
                    ARROW_SCHEMA_KEY: base64.b64encode(
                        arrow_schema.serialize().to_pybytes()
                    ).decode(),
                }
            )
            self._writer.close()
        except OSError as exc:
            raise safe_output.write_error(self.path, exc) from None
        self._writer = None
        if check is not None:
            check(self._temp)
        safe_output.commit_temp(self._temp, self.path)
        self._committed = True
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):  # the file is being thrown away anyway
                self._writer.close()
            self._writer = None
        safe_output.discard_temp(self._temp)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._committed:
            self.abort()
