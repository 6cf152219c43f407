"""Arrow arrays from numpy buffers and back, without pandas.

pyarrow imports pandas the first time `pa.array(...)` or `to_numpy()` runs,
whenever pandas is installed (it is an extra of this project, and often there
anyway): about 0.5 CPU s of a short recording's start-up, and 51 MiB of resident
memory for a reading command that never uses it.

- Writing (the recorder): the helpers below build the arrays from buffers
  (`pa.Array.from_buffers`): numpy memory is taken without a copy, and no
  per-element Python runs.
- Reading (the analysis): `numpy_of` turns the integer, float and boolean
  columns into numpy straight from the Arrow buffers; anything else (nulls,
  strings, nested types) goes through `to_numpy()` as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def taken_binaries(values: pa.Array, index: npt.NDArray[np.integer[Any]]) -> pa.Array:
    """`values.take(index)` for a `binary` array without nulls (as `binaries` makes
    them), gathered with numpy: pyarrow's `take` imports pyarrow.compute, 0.03-0.07
    CPU s of every recording (docs/performance.md)."""
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)
    offsets = offsets[values.offset : values.offset + len(values) + 1].astype(np.int64)
    data = values.buffers()[2]
    source = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
    lengths = (offsets[1:] - offsets[:-1])[index]
    ends = np.cumsum(lengths)
    # Each output byte's place in `source`: its value's start there, plus how far
    # into the value it is (its place in the output less the value's start there).
    moves = np.repeat(offsets[:-1][index] - (ends - lengths), lengths)
    gathered = source[moves + np.arange(int(ends[-1]) if len(ends) else 0)]
    return pa.Array.from_buffers(
        pa.binary(), len(index), [None, _offsets(lengths), pa.py_buffer(gathered.tobytes())]
    )


def strings(values: Sequence[str]) -> pa.Array:
    """A `string` array of `values`."""
    joined = "".join(values)
    data = joined.encode()
    if len(data) == len(joined):  # ASCII: each value's length in bytes is its length
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    else:
        encoded = [v.encode() for v in values]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    return pa.Array.from_buffers(
        pa.string(), len(values), [None, _offsets(lengths), pa.py_buffer(data)]
    )


def all_null(kind: pa.DataType, length: int) -> pa.Array:
    """`length` nulls of `kind` (pa.nulls does not ask about pandas)."""
    return pa.nulls(length, kind)


def numpy_of(values: pa.Array | pa.ChunkedArray) -> npt.NDArray[Any]:
    """The values of `values` as numpy: a read-only view of the Arrow buffer for one
    chunk of integers or floats without nulls, a new array for several chunks."""
    if isinstance(values, pa.ChunkedArray):
        if values.num_chunks == 1:
            return numpy_of(values.chunk(0))
        if values.num_chunks == 0:
            return _fallback(values)
        return np.concatenate([numpy_of(chunk) for chunk in values.chunks])
    kind = values.type
    if values.null_count:
        return _fallback(values)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        dtype = np.dtype(kind.to_pandas_dtype())
        data = values.buffers()[1]
        if data is None:
            return np.zeros(0, dtype=dtype)
        return np.frombuffer(
            data, dtype=dtype, count=len(values), offset=values.offset * dtype.itemsize
        )
    if pa.types.is_boolean(kind):
        data = values.buffers()[1]
        if data is None:
            return np.zeros(0, dtype=np.bool_)
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        return bits[values.offset : values.offset + len(values)].astype(np.bool_)
    return _fallback(values)


def _fallback(values: pa.Array | pa.ChunkedArray) -> npt.NDArray[Any]:
    out: npt.NDArray[Any] = values.to_numpy(zero_copy_only=False)
    return out


def arrow_indices(indices: npt.ArrayLike) -> pa.Array:
    """Row indices as an Arrow int64 array, for `take`, made from their numpy buffer:
    `pa.array` imports pandas (see above) for a list and a numpy array alike."""
    values = np.ascontiguousarray(indices, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), values.size, [None, pa.py_buffer(values)])
