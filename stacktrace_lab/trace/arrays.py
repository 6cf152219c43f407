"""Arrow arrays built from buffers: what the recorder hands the writer.

`pa.array(...)` asks, for every call, whether its argument is a pandas
object, and the first such question imports pandas (about 0.5 CPU s, a third
of a short recording's start-up) even though nothing here uses it. These
helpers build the same arrays from buffers (`pa.Array.from_buffers`): numpy
memory is taken without a copy, and no per-element Python runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa

#: The numpy type of each Arrow type built here.
_DTYPES = {
    pa.uint64(): np.uint64,
    pa.int64(): np.int64,
    pa.int32(): np.int32,
    pa.uint16(): np.uint16,
}


def numeric(values: npt.NDArray[np.generic], kind: pa.DataType) -> pa.Array:
    """A fixed-width array over `values` (converted to `kind`'s width if it differs)."""
    data = np.ascontiguousarray(values, dtype=_DTYPES[kind])
    return pa.Array.from_buffers(kind, len(data), [None, pa.py_buffer(data)])


def with_nulls(
    values: npt.NDArray[np.generic], kind: pa.DataType, nulls: npt.NDArray[np.bool_]
) -> pa.Array:
    """`numeric`, null where `nulls` is true (no validity buffer when none is)."""
    if not nulls.any():
        return numeric(values, kind)
    data = np.ascontiguousarray(np.where(nulls, 0, values), dtype=_DTYPES[kind])
    validity = np.packbits(~nulls, bitorder="little")
    return pa.Array.from_buffers(
        kind, len(data), [pa.py_buffer(validity), pa.py_buffer(data)], null_count=int(nulls.sum())
    )


def _offsets(lengths: npt.NDArray[np.int64]) -> pa.Buffer:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.py_buffer(offsets)


def binaries(values: Sequence[bytes]) -> pa.Array:
    """A `binary` array of `values`."""
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    return pa.Array.from_buffers(
        pa.binary(), len(values), [None, _offsets(lengths), pa.py_buffer(b"".join(values))]
    )


def strings(values: Sequence[str]) -> pa.Array:
    """A `string` array of `values`."""
    encoded = [v.encode() for v in values]
    lengths = np.fromiter((len(v) for v in encoded), dtype=np.int64, count=len(encoded))
    return pa.Array.from_buffers(
        pa.string(), len(values), [None, _offsets(lengths), pa.py_buffer(b"".join(encoded))]
    )


def all_null(kind: pa.DataType, length: int) -> pa.Array:
    """`length` nulls of `kind` (pa.nulls does not ask about pandas)."""
    return pa.nulls(length, kind)
