"""Arrow columns to numpy from their buffers (trace/arrays.py): the same values as
pyarrow's `to_numpy`, for sliced, chunked, boolean and null-holding arrays, and a
reading command that never imports pandas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from stacktrace_lab.trace.arrays import arrow_indices, binaries, numpy_of, taken_binaries

GOLDEN = Path(__file__).resolve().parents[1] / "traces" / "first-switch.parquet"


@pytest.mark.parametrize(
    "array",
    [
        pa.array(np.arange(10, dtype=np.uint64) * 2**40),
        pa.array(np.arange(10, dtype=np.int16) - 5).slice(3, 4),
        pa.array([1.5, -2.0, 3.25]),
        pa.array([True, False, True, True, False, False, True, False, True]).slice(1, 7),
        pa.array([1, None, 3], type=pa.int64()),
        pa.chunked_array([pa.array([1, 2], pa.uint32()), pa.array([3], pa.uint32())]),
        pa.chunked_array([pa.array([7, 8, 9], pa.uint8()).slice(1)]),
        pa.chunked_array([], type=pa.int64()),
        pa.array([], type=pa.uint64()),
    ],
)
def test_numpy_of_is_to_numpy(array: pa.Array | pa.ChunkedArray) -> None:
    expected = array.to_numpy(zero_copy_only=False)
    got = numpy_of(array)
    assert got.dtype == expected.dtype
    assert np.array_equal(got, expected, equal_nan=True)


def test_arrow_indices_take() -> None:
    table = pa.table({"x": pa.array(np.arange(100, 110, dtype=np.int64))})
    picked = table.take(arrow_indices(np.array([9, 0, 4], dtype=np.int32)))
    assert picked.column("x").to_pylist() == [109, 100, 104]
    assert len(arrow_indices([])) == 0


def test_check_and_show_do_not_import_pandas() -> None:
    code = (
        "import sys\n"
        "from stacktrace_lab.cli import main\n"
        f"main(['check', {str(GOLDEN)!r}])\n"
        f"main(['show', '--step', '5', {str(GOLDEN)!r}])\n"
        "print('pandas' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize(
    ("values", "index"),
    [
        ([b"\x90", b"", b"\x48\x89\xe5", b"\x0f\x05"], [2, 0, 0, 3, 1, 2, 1]),
        ([b"\xc3"], [0, 0, 0]),
        ([b"ab", b"cde"], []),
        ([b"", b""], [1, 0]),
    ],
)
def test_taken_binaries_is_take(values: list[bytes], index: list[int]) -> None:
    array = binaries(values)
    rows = np.array(index, dtype=np.int32)
    got = taken_binaries(array, rows)
    expected = array.take(pa.array(rows))
    assert got.type == expected.type
    assert got.to_pylist() == expected.to_pylist() == [values[i] for i in index]
    assert got.equals(expected)
    # A slice of an array (an offset into its buffers) too.
    sliced = binaries([b"zz", *values]).slice(1)
    assert taken_binaries(sliced, rows).to_pylist() == expected.to_pylist()
