"""`stacktrace-lab export`: Chrome trace-event JSON for Perfetto, and Tenet's text trace.

The perfetto package's trace processor downloads its binary at first use, so
it cannot run offline; the JSON is checked here against the trace-event
format instead (Google's "Trace Event Format" document, JSON Object Format).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from stacktrace_lab.analysis.check import check
from stacktrace_lab.analysis.events import derive_facts
from stacktrace_lab.cli import main
from stacktrace_lab.record.recorder import record
from stacktrace_lab.scenario import load_scenario
from stacktrace_lab.trace import load_trace

PHASES = set("BEXiIMCbnestfPOND(){}RcSTpF")  # every phase letter the format defines
METADATA = {"process_name", "process_labels", "process_sort_index", "thread_name",
            "thread_sort_index"}  # fmt: skip


def validate_trace_events(doc: Any) -> dict[int, list[dict[str, Any]]]:
    """Check `doc` against the trace-event format; return the X slices per tid.

    Object form with a `traceEvents` list; every event has a known `ph`, a
    `pid` and (but for process metadata and global instants) a `tid`; X has a
    name, a numeric `ts` and a `dur` >= 0; i has a scope g, p or t; M names one
    of the metadata kinds with its `args`. Complete events on one thread must
    nest (a slice starting inside another ends inside it), or viewers draw
    them wrong.
    """
    assert isinstance(doc, dict) and isinstance(doc["traceEvents"], list)
    assert doc.get("displayTimeUnit", "ms") in ("ms", "ns")
    slices: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in doc["traceEvents"]:
        assert e["ph"] in PHASES, e
        assert isinstance(e["pid"], int), e
        if e["ph"] == "M":
            assert e["name"] in METADATA and isinstance(e["args"], dict), e
            continue
        assert isinstance(e["name"], str) and e["name"], e
        assert isinstance(e["ts"], int | float) and e["ts"] >= 0, e
        if e["ph"] == "X":
            assert isinstance(e["tid"], int)
            assert isinstance(e["dur"], int | float) and e["dur"] >= 0, e
            slices[e["tid"]].append(e)
        elif e["ph"] == "i":
            assert e["s"] in ("g", "p", "t"), e
            if e["s"] == "t":
                assert isinstance(e["tid"], int)
    for tid, events in slices.items():
        open_ends: list[float] = []
        for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
            while open_ends and open_ends[-1] <= e["ts"]:
                open_ends.pop()
            end = e["ts"] + e["dur"]
            assert not open_ends or end <= open_ends[-1], f"slices overlap on tid {tid}: {e}"
            open_ends.append(end)
    return slices


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("export")
    paths = {}
    for name in ("first-switch", "green-threads", "green-threads-no-skip"):
        paths[name] = out / f"{name}.parquet"
        record(load_scenario(name), paths[name])
    return paths


def _export(path: Path, to: str, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["export", str(path), "--to", to]) == 0
    written = Path(capsys.readouterr().out.split(":")[0])
    assert written.exists()
    return written


def test_green_threads_one_track_per_stack_a_slice_per_call(
    traces: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = _export(traces["green-threads"], "perfetto", capsys)
    doc = json.loads(out.read_text())
    slices = validate_trace_events(doc)
    names = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert sorted(names.values()) == ["stack main", "stack worker1", "stack worker2",
                                      "stack worker3"]  # fmt: skip
    facts = derive_facts(load_trace(traces["green-threads"]))
    calls = [e for events in slices.values() for e in events if e["cat"] == "call"]
    assert sorted(e["ts"] for e in calls) == (facts.calls + 1).tolist()
    # Each worker's track holds its thread function, entered by a planted return.
    for worker, function in (("worker1", "thread1"), ("worker2", "thread2")):
        tid = next(t for t, n in names.items() if n == f"stack {worker}")
        planted = [e["name"] for e in slices[tid] if e["cat"] == "planted return"]
        assert function in planted
        assert all(e["args"]["stack"] == worker for e in slices[tid])
    # The instants at switches are the analysis' switch steps.
    switches = [e for e in doc["traceEvents"] if e.get("cat") == "switch"]
    assert [e["ts"] for e in switches] == facts.switch_steps().tolist()
    assert switches[0]["name"] == "switch main -> worker1"


def test_violations_are_instant_events(
    traces: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = _export(traces["green-threads-no-skip"], "perfetto", capsys)
    doc = json.loads(out.read_text())
    validate_trace_events(doc)
    result = check(load_trace(traces["green-threads-no-skip"]))
    expected = sorted((v.step, v.invariant) for r in result.results for v in r.violations)
    found = sorted(
        (e["ts"], e["name"].removeprefix("violation: "))
        for e in doc["traceEvents"]
        if e.get("cat") == "violation"
    )
    assert found == expected and len(found) > 50


def test_a_slice_lasts_from_its_call_to_its_ret(
    traces: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(_export(traces["first-switch"], "perfetto", capsys).read_text())
    slices = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    by_name = {e["name"]: e for e in slices}
    # main runs from the start; gt_switch is called at step 10 (runs from 11) and
    # never returns (its ret at step 12 pops hello instead of the return address).
    assert by_name["main"]["ts"] == 0
    assert by_name["gt_switch"]["ts"] == 11
    assert by_name["gt_switch"]["args"]["returned"] == "never"
    assert (by_name["hello"]["ts"], by_name["hello"]["cat"]) == (13, "planted return")


def test_tenet_one_line_per_step_with_the_previous_steps_memory(
    traces: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = traces["first-switch"]
    out = _export(path, "tenet", capsys)
    lines = out.read_text().splitlines()
    trace = load_trace(path)
    assert len(lines) == trace.num_rows + 1
    entry = re.compile(r"^(r\w+)=0x[0-9a-f]+$|^(mr|mw)=0x[0-9a-f]+:([0-9a-f]{2})+$")
    for line in lines:
        assert all(entry.match(part) for part in line.split(",")), line
    rows = trace.table(["rip", "rsp"]).to_pydict()
    # rip on every line is the instruction about to run; the first has every register.
    for i, line in enumerate(lines[:-1]):
        assert f"rip={rows['rip'][i]:#x}" in line.split(",")
    assert lines[0].count("=") == 17
    # The planting store (step 6) writes hello's address at green+32: on the next line.
    green = trace.metadata.region("green")
    hello = trace.metadata.symbols["hello"]
    assert f"mw={green.base + 32:#x}:{hello.to_bytes(8, 'little').hex()}" in lines[7]
    # The ret at step 12 reads it: its mr is on line 13, where rip is hello.
    assert f"rip={hello:#x}" in lines[13] and f"mr={green.base + 32:#x}:" in lines[13]


def test_export_of_a_missing_trace_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(tmp_path / "no.parquet"), "--to", "perfetto"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_an_unwritable_output_is_bad_input_and_leaves_nothing(
    traces: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-dir" / "out.json"
    assert main(["export", str(traces["first-switch"]), "--to", "tenet", "-o", str(missing)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not missing.parent.exists()
    out = tmp_path / "out.json"
    assert main(["export", str(traces["first-switch"]), "--to", "perfetto", "-o", str(out)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


def test_tenet_lines_replay_to_every_rows_registers_and_writes(
    traces: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Applying the lines in order gives back each row's registers; each line's `mw`
    entries are the previous row's writes."""
    from stacktrace_lab.export.tenet import TENET_REGISTERS

    path = traces["green-threads"]
    lines = _export(path, "tenet", capsys).read_text().splitlines()
    trace = load_trace(path)
    rows = trace.table([*TENET_REGISTERS, "rip", "writes"]).to_pylist()
    state: dict[str, int] = {}
    for i, line in enumerate(lines[:-1]):
        writes = []
        for part in line.split(","):
            key, _, value = part.partition("=")
            if key == "mw":
                addr, _, data = value.partition(":")
                writes.append((int(addr, 16), bytes.fromhex(data)))
            elif key != "mr":
                state[key] = int(value, 16)
        assert state == {name: rows[i][name] for name in (*TENET_REGISTERS, "rip")}, i
        previous = rows[i - 1]["writes"] if i else []
        assert writes == [(w["addr"], w["data"]) for w in previous], i
