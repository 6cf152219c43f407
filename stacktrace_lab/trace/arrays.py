"""Arrow columns as numpy arrays, from their buffers.

pyarrow's `to_numpy()` imports pandas the first time it runs, whenever pandas is
installed (it is an extra of this project, and often there anyway): 51 MiB of
resident memory for a reading command that never uses it. The integer, float and
boolean columns the analysis reads are turned into numpy here instead, straight
from the Arrow buffers; anything else (nulls, strings, nested types) goes through
`to_numpy()` as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa


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
