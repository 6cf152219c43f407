"""The built-in scenarios: each records, stops and prints as its [expect] says.

`green-threads` gets a closer look: spawn plants each worker's function, `skip`
and `guard` at the top of its stack, every worker is entered with the ABI's
alignment, and the workers' lines interleave. The broken variants are checked
for the one mistake each is built to show, read straight from the trace.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import pandas as pd
import pytest

from stacktrace_lab.analysis import check
from stacktrace_lab.layout import Region
from stacktrace_lab.record.recorder import record
from stacktrace_lab.scenario import INVARIANT_IDS, builtin_names, load_scenario
from stacktrace_lab.trace.reader import Trace, load_trace

BUILTINS = builtin_names()
BROKEN = [name for name in BUILTINS if load_scenario(name).breaks is not None]
WORKERS = ("worker1", "worker2", "worker3")
LINE = re.compile(r"thread (\d+) counter (\d+)")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Trace]:
    """Record a built-in once per test module and load its trace."""
    directory = tmp_path_factory.mktemp("builtins")
    traces: dict[str, Trace] = {}

    def get(name: str) -> Trace:
        if name not in traces:
            path = directory / f"{name}.parquet"
            record(load_scenario(name), path)
            traces[name] = load_trace(path)
        return traces[name]

    return get


def test_the_catalogue() -> None:
    for name in (
        "first-switch",
        "green-threads",
        "first-switch-misaligned",
        "first-switch-overflow",
        "green-threads-no-skip",
        "green-threads-clobber",
    ):
        assert name in BUILTINS
    for name in BUILTINS:
        scenario = load_scenario(name)
        assert scenario.name == name
        assert name.startswith(("first-switch", "green-threads")), name
        assert scenario.description, name
        assert scenario.expect.stop is not None and scenario.expect.stdout is not None, name
    # The correct programs break nothing; every other built-in breaks one named invariant.
    assert load_scenario("first-switch").breaks is None
    assert load_scenario("green-threads").breaks is None
    assert set(BUILTINS) - set(BROKEN) == {"first-switch", "green-threads"}
    assert all(load_scenario(name).breaks in INVARIANT_IDS for name in BROKEN)


@pytest.mark.parametrize("name", BUILTINS)
def test_stop_and_stdout_are_as_expected(name: str, recorded: Callable[[str], Trace]) -> None:
    expect = load_scenario(name).expect
    meta = recorded(name).metadata
    assert meta.stop.reason == expect.stop
    assert meta.stdout == expect.stdout
    assert meta.stderr == ""


@pytest.mark.parametrize("name", BUILTINS)
def test_expected_rets_pop_their_planted_targets(
    name: str, recorded: Callable[[str], Trace]
) -> None:
    """Each [[expect.ret]]: some `ret` reads the slot and lands on the target label."""
    trace = recorded(name)
    meta = trace.metadata
    rows = trace.rows(["step", "rip", "insn", "reads"])
    rets = rows[rows["insn"].astype(str).str.startswith("ret")]
    popped = {int(r[0]["addr"]): int.from_bytes(r[0]["data"], "little") for r in rets["reads"]}
    for ret in load_scenario(name).expect.rets:
        slot = meta.region(ret.stack).base + ret.index
        assert popped.get(slot) == meta.symbols[ret.target], (ret, hex(slot))


# --- green-threads -----------------------------------------------------------------------


def _slot(trace: Trace, row: pd.Series, stack: str, index: int) -> int:
    """The 8 bytes at `index` of `stack` in the snapshot of `row` (state before that step)."""
    window = trace.metadata.snapshots[stack]
    region = trace.metadata.region(stack)
    offset = region.base + index - window.base
    assert 0 <= offset <= window.size - 8
    return int.from_bytes(row[window.column][offset : offset + 8], "little")


def _first_step_in(rows: pd.DataFrame, symbol: str) -> int:
    steps = rows.index[rows["symbol"].astype(str) == symbol]
    assert len(steps), symbol
    return int(steps[0])


def test_spawn_plants_function_skip_and_guard(recorded: Callable[[str], Trace]) -> None:
    trace = recorded("green-threads")
    symbols = trace.metadata.symbols
    columns = ["step", "symbol", *(trace.metadata.snapshots[w].column for w in WORKERS)]
    rows = trace.rows(columns)
    # Before the first switch, all three workers have been spawned.
    before_switch = rows.iloc[_first_step_in(rows, "switch+0")]
    for n, worker in enumerate(WORKERS, start=1):
        size = trace.metadata.region(worker).size
        assert _slot(trace, before_switch, worker, size - 32) == symbols[f"thread{n}"]
        assert _slot(trace, before_switch, worker, size - 24) == symbols["skip"]
        assert _slot(trace, before_switch, worker, size - 16) == symbols["guard"]
        assert _slot(trace, before_switch, worker, size - 8) == 0  # the top slot stays free


def _entries(trace: Trace, label: str) -> pd.DataFrame:
    rows = trace.rows(["step", "rsp", "symbol"])
    return rows[rows["symbol"].astype(str) == f"{label}+0"]


@pytest.mark.parametrize(
    ("name", "remainder"), [("green-threads", 8), ("green-threads-no-skip", 0)]
)
def test_thread_functions_entry_alignment(
    name: str, remainder: int, recorded: Callable[[str], Trace]
) -> None:
    """Each thread function starts once, at its stack's planted slot; without skip, 8 bytes off."""
    trace = recorded(name)
    for n, worker in enumerate(WORKERS, start=1):
        region: Region = trace.metadata.region(worker)
        entries = _entries(trace, f"thread{n}")
        assert len(entries) == 1
        rsp = int(entries["rsp"].iloc[0])
        assert rsp == region.top - (24 if name == "green-threads" else 16)
        assert rsp % 16 == remainder


def test_guard_is_entered_aligned_once_per_worker(recorded: Callable[[str], Trace]) -> None:
    trace = recorded("green-threads")
    entries = _entries(trace, "guard")
    tops = {trace.metadata.region(w).top for w in WORKERS}
    assert {int(rsp) + 8 for rsp in entries["rsp"]} == tops  # rsp = s - 8 on each worker
    assert all(int(rsp) % 16 == 8 for rsp in entries["rsp"])


def test_rsp_visits_every_stack(recorded: Callable[[str], Trace]) -> None:
    trace = recorded("green-threads")
    rsp = trace.column("rsp")
    for stack in trace.metadata.stacks:
        inside = (rsp >= stack.base) & (rsp <= stack.top)
        assert inside.any(), stack.name


def _lines(stdout: str) -> list[tuple[int, int]]:
    lines = stdout.splitlines()
    parsed = [LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    return [(int(m.group(1)), int(m.group(2))) for m in parsed if m]


def test_output_interleaves_the_workers(recorded: Callable[[str], Trace]) -> None:
    lines = _lines(recorded("green-threads").metadata.stdout)
    ids = [thread for thread, _ in lines]
    # Round robin: the first round is one line from each worker, in spawn order ...
    assert ids[:3] == [1, 2, 3]
    # ... no worker prints twice in a row (here one always has company) ...
    assert all(a != b for a, b in itertools.pairwise(ids))
    # ... and each counts 0, 1, 2, ... in its own order, for its own number of iterations.
    counts: dict[int, int] = {}
    for thread in sorted(set(ids)):
        counters = [k for t, k in lines if t == thread]
        assert counters == list(range(len(counters)))
        counts[thread] = len(counters)
    assert len(set(counts.values())) == 3, counts


def test_clobbered_rbx_shows_in_the_output(recorded: Callable[[str], Trace]) -> None:
    """After its first yield each worker prints whatever rbx the previous thread left."""
    good = _lines(recorded("green-threads").metadata.stdout)
    broken = _lines(recorded("green-threads-clobber").metadata.stdout)
    assert [k for _, k in broken] == [k for _, k in good]  # counters survive: r12 is restored
    assert broken[:3] == good[:3]  # before any worker has yielded, the ids are right
    assert broken[3:] != good[3:]


# --- the seed's broken variants ----------------------------------------------------------


def test_misaligned_hello_starts_at_the_top(recorded: Callable[[str], Trace]) -> None:
    trace = recorded("first-switch-misaligned")
    (rsp,) = (int(r) for r in _entries(trace, "hello")["rsp"])
    assert rsp == trace.metadata.region("green").top
    assert rsp % 16 == 0


def test_overflowing_println_runs_below_green(recorded: Callable[[str], Trace]) -> None:
    trace = recorded("first-switch-overflow")
    green = trace.metadata.region("green")
    rows = trace.rows(["symbol", "rsp", "writes"])
    page = green.map_start  # green's page: below it is a guard page, then main's stack
    on_green = rows["rsp"][rows["rsp"] >= page]
    assert int(on_green.min()) == green.base - 48
    writes = [int(w["addr"]) for ws in rows["writes"] for w in ws]
    below = [addr for addr in writes if page <= addr < green.base]
    assert len(below) == 33  # the whole message is copied below the stack
    assert min(below) == green.base - 48


def test_wrong_slot_pops_zeros(recorded: Callable[[str], Trace]) -> None:
    trace = recorded("first-switch-wrong-slot")
    rows = trace.rows(["insn", "reads"])
    last = rows.iloc[-1]
    assert str(last["insn"]).startswith("ret")
    (read,) = last["reads"]
    assert int(read["addr"]) == trace.metadata.region("green").base + 16
    assert bytes(read["data"]) == bytes(8)
    assert "0x0" in trace.metadata.stop.detail


# --- check: each built-in breaks exactly what it says --------------------------------------

#: Words the first violation's message must use: the mistake in the scenario's own terms.
EXPLANATIONS = {
    "first-switch-misaligned": ("hello", "index 40", "index 32"),
    "first-switch-overflow": ("green", "48 bytes below"),
    "first-switch-wrong-slot": ("green[16]", "nothing in the program wrote"),
    "green-threads-no-skip": ("thread1", "index 1000", "index 992"),
    "green-threads-clobber": ("rbx", "switch"),
}


@pytest.mark.parametrize("name", BUILTINS)
def test_check_fails_exactly_the_taught_invariant(
    name: str, recorded: Callable[[str], Trace]
) -> None:
    breaks = load_scenario(name).breaks
    result = check(recorded(name))
    assert result.failed == ((breaks,) if breaks else ())
    assert result.exit_status == (1 if breaks else 0)
    if breaks:
        first = result.result(breaks).violations[0]
        for words in EXPLANATIONS[name]:
            assert words in first.message, (words, first.message)


def test_explanations_cover_every_broken_builtin() -> None:
    assert set(EXPLANATIONS) == set(BROKEN)


def test_check_sees_only_spawns_plants_in_green_threads(recorded: Callable[[str], Trace]) -> None:
    """Nine planted returns, three per worker; every other ret, the switches' included,
    is matched to the call that pushed its slot (which is how callee-saved is checked)."""
    trace = recorded("green-threads")
    result = check(trace)
    assert result.planted_total == 9
    planted = {(p.region, p.index, p.target) for p in result.planted}
    expected = set()
    for n, worker in enumerate(WORKERS, start=1):
        size = trace.metadata.region(worker).size
        for below_top, target in ((32, f"thread{n}"), (24, "skip"), (16, "guard")):
            expected.add((worker, size - below_top, target))
    assert planted == expected
    assert all(p.planted_symbol.startswith("spawn") for p in result.planted)
