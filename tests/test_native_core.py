"""The recording core in C against the pure-Python hooks: byte-identical traces.

Every built-in scenario, the tutorial's C and Rust programs (compiled here;
skipped, saying why, without gcc or rustc) and a long program (200,000 steps
of benchmarks/call-heavy.toml) are recorded both ways in this process; the
files must be equal byte for byte, and on failure the first differing column
is named. `STACKTRACE_LAB_PURE_PYTHON=1` turns the C core off (record/core/hooks.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stacktrace_lab.examples import build_example, compiler_missing
from stacktrace_lab.record.core.hooks import PURE_PYTHON_ENV, native_core
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.record.recorder import Recording, RecordOptions, record
from stacktrace_lab.scenario import builtin_names, load_scenario

CALL_HEAVY = Path(__file__).resolve().parent.parent / "benchmarks" / "call-heavy.toml"

pytestmark = pytest.mark.skipif(
    native_core() is None,
    reason=f"the C recording core is not built here (or {PURE_PYTHON_ENV}=1 turns it off)",
)


def first_difference(a: Path, b: Path) -> str | None:
    """None when the two traces are equal byte for byte; else what differs first."""
    if a.read_bytes() == b.read_bytes():
        return None
    fa, fb = pq.ParquetFile(a), pq.ParquetFile(b)
    if fa.metadata.num_rows != fb.metadata.num_rows:
        return f"rows: {fa.metadata.num_rows} != {fb.metadata.num_rows}"
    ta, tb = fa.read(), fb.read()
    for name in ta.column_names:
        col_a, col_b = ta.column(name), tb.column(name)
        if not col_a.equals(col_b):
            row = next(i for i in range(len(col_a)) if col_a[i] != col_b[i])
            return f"column {name}, first at row {row}: {col_a[row]} != {col_b[row]}"
    if ta.schema.metadata != tb.schema.metadata:
        return "the metadata"
    return "the bytes (the columns and metadata are equal: encoding or layout)"


def both_ways(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, recorder: Callable[[Path], Recording]
) -> Recording:
    monkeypatch.delenv(PURE_PYTHON_ENV, raising=False)
    native = recorder(tmp_path / "c-core.parquet")
    monkeypatch.setenv(PURE_PYTHON_ENV, "1")
    python = recorder(tmp_path / "pure-python.parquet")
    difference = first_difference(native.path, python.path)
    assert difference is None, f"the C core and the Python hooks differ: {difference}"
    return native


@pytest.mark.parametrize("name", builtin_names())
def test_builtin_scenarios(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scenario = load_scenario(name)
    both_ways(monkeypatch, tmp_path, lambda out: record(scenario, out))


@pytest.mark.parametrize("build", ["c-static", "rust-static-pie"])
def test_the_example_programs(build: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    why = compiler_missing(build)
    if why is not None:
        pytest.skip(f"cannot build the {build} example: {why}")
    program = build_example(build, tmp_path / "bin")
    recording = both_ways(monkeypatch, tmp_path, lambda out: record_elf(program, out))
    assert recording.metadata.steps > 10_000
    # printf/println! run off the 48-byte stack: the bytes under its base are a
    # column of their own (`calloc_48__below`), written the same by both cores.
    below = recording.metadata.snapshots["calloc_48__below"]
    assert below.top == recording.metadata.region("calloc_48").base


@pytest.mark.parametrize("from_symbol", ["main"])
def test_from_main_fast_forwards_the_same_way(
    from_symbol: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    why = compiler_missing("c-static")
    if why is not None:
        pytest.skip(f"cannot build the C example: {why}")
    program = build_example("c-static", tmp_path / "bin")
    recording = both_ways(
        monkeypatch, tmp_path, lambda out: record_elf(program, out, from_symbol=from_symbol)
    )
    assert recording.metadata.start is not None and recording.metadata.start.step > 1000


@pytest.mark.parametrize("from_symbol", [None, "times"])
def test_a_threaded_program(
    from_symbol: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two threads preempted every 700 instructions (record/machine/threads.py); with `--from
    times` the fast-forward itself switches threads, to the first thread that calls it."""
    from tests.test_threads import BUSY_C, _build

    program = _build(tmp_path, "busy", BUSY_C)
    options = RecordOptions(thread_slice=700)
    recording = both_ways(
        monkeypatch,
        tmp_path,
        lambda out: record_elf(program, out, options, from_symbol=from_symbol),
    )
    threads = pq.read_table(recording.path, columns=["thread"]).column(0).to_pylist()
    assert set(threads) == {1, 2, 3} if from_symbol is None else {2, 3} <= set(threads)
    assert recording.metadata.stdout.endswith("6000\n")


def test_a_thread_that_never_blocks_is_preempted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Main polls until its thread has run: the thread runs when main's slice ends.
    On the discovery pass's translations (Machine.rewind) main kept the CPU for
    ever in the C core, so the recording ran to --max-steps."""
    from tests.test_threads import SPIN_C, _build

    program = _build(tmp_path, "spin", SPIN_C)
    recording = both_ways(monkeypatch, tmp_path, lambda out: record_elf(program, out))
    assert recording.metadata.stop.reason == "exit"
    assert recording.metadata.stdout == "polled\n"


def test_a_long_program(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scenario = load_scenario(CALL_HEAVY)
    options = RecordOptions(max_steps=200_000)
    recording = both_ways(monkeypatch, tmp_path, lambda out: record(scenario, out, options))
    assert recording.metadata.steps == 200_000
    assert pq.ParquetFile(recording.path).num_row_groups == 4


def test_a_difference_is_named_by_its_column(tmp_path: Path) -> None:
    """The checker above can fail: two different traces name the first column that differs."""
    one = record(load_scenario("first-switch"), tmp_path / "one.parquet").path
    two = record(
        load_scenario("first-switch"), tmp_path / "two.parquet", RecordOptions(max_steps=5)
    ).path
    assert first_difference(one, one) is None
    assert first_difference(one, two) is not None
