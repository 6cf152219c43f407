"""Trace format 5 stores stack snapshots as a dictionary of window versions
(record/core/columns.py, `SnapshotState.column(..., dictionary=True)`): the C
core and the pure-Python fallback must build the same dictionary, and it must
expand to exactly the rows the dense column holds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stacktrace_lab.record.core.columns import Events, SnapshotState
from stacktrace_lab.record.core.hooks import PURE_PYTHON_ENV, native_module
from stacktrace_lab.trace.format import SnapshotWindow

BASE = 0x1000


def random_writes(rng: np.random.Generator, n_rows: int, size: int) -> Events:
    """Writes in row order: some inside the window, some straddling its edges, some
    outside, and many that write back a value the window already held."""
    count = int(rng.integers(0, 3 * n_rows + 1))
    rows = np.sort(rng.integers(0, max(n_rows, 1), size=count)).astype(np.int64)
    widths = rng.choice([1, 2, 4, 8, 16], size=count).astype(np.int64)
    addr = (BASE + rng.integers(-24, size + 24, size=count)).astype(np.uint64)
    data = rng.choice([0, 0xAA, 0x55], size=int(widths.sum())).astype(np.uint8)
    return Events(rows, addr, widths, data)


def columns(
    monkeypatch: pytest.MonkeyPatch, pure: bool, initial: bytes, writes: Events, n_rows: int
) -> tuple[pa.Array, pa.Array]:
    if pure:
        monkeypatch.setenv(PURE_PYTHON_ENV, "1")
    else:
        monkeypatch.delenv(PURE_PYTHON_ENV, raising=False)
    window = SnapshotWindow("stack__s", BASE, len(initial))
    dense = SnapshotState(window, initial).column(writes, n_rows)
    dictionary = SnapshotState(window, initial).column(writes, n_rows, dictionary=True)
    return dense, dictionary


@pytest.mark.parametrize("seed", range(40))
def test_the_dictionary_expands_to_the_dense_rows_in_c_and_python(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    if native_module() is None:
        pytest.skip("the C core is not built here")
    rng = np.random.default_rng(seed)
    size = int(rng.choice([8, 13, 48, 512]))
    n_rows = int(rng.integers(0, 300))
    initial = bytes(rng.choice([0, 0xAA], size=size).astype(np.uint8))
    writes = random_writes(rng, n_rows, size)
    dense_c, dictionary_c = columns(monkeypatch, False, initial, writes, n_rows)
    dense_py, dictionary_py = columns(monkeypatch, True, initial, writes, n_rows)
    assert dense_c.equals(dense_py)
    assert dictionary_c.equals(dictionary_py)  # same versions, same order, same indices
    versions = dictionary_c.dictionary.to_pylist()
    assert len(set(versions)) == len(versions)  # each value once (else Parquet falls back)
    assert all(len(v) == size for v in versions)
    indices = dictionary_c.indices.to_numpy()
    # Numbered in the order rows first show them.
    _, first = np.unique(indices, return_index=True)
    assert list(indices[np.sort(first)]) == list(range(len(versions)))
    expanded = dictionary_c.dictionary.cast(pa.binary(size)).take(dictionary_c.indices)
    assert expanded.equals(dense_c)
