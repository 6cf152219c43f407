"""The trace as Chrome trace-event JSON, for Perfetto UI (ui.perfetto.dev) and chrome://tracing.

The trace-event format (the "JSON Object Format" of Google's Trace Event
Format document): `{"traceEvents": [...], ...}`, each event with a phase `ph`.
Used here:
- `M` metadata: the process's name (the scenario) and each track's name;
- `X` complete events: one slice per frame, from the function's first step
  (the one after its call, or after the planted ret that landed on it)
  through the ret that left it; a frame still open at the end runs to the end;
- `i` instant events: stack switches (on the stack switched to), planted
  returns and invariant violations.

Time is the step: 1 step is shown as 1 µs (`ts` is in microseconds). Each
stack region is one thread track (`tid`), so a green thread's frames stay on
its own track while it is switched away: the slice of `switch` on a
suspended stack spans the time that stack waits. A threaded program also has
one track per OS thread (`thread 2 (tid 1001)`), with a slice for each turn
the scheduler gave it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..analysis.check import check
from ..analysis.events import TraceFacts, derive_facts
from ..analysis.source import SourceLines
from ..explore.backtrace import START, frame_history
from ..safe_output import write_file
from ..trace.reader import Trace

PID = 1


def _tid(stack: int) -> int:
    return stack + 1


def chrome_trace_events(trace: Trace, facts: TraceFacts | None = None) -> dict[str, Any]:
    """The whole JSON document, as Python data."""
    facts = facts if facts is not None else derive_facts(trace)
    meta = trace.metadata
    n = facts.steps
    source = SourceLines(meta)
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": PID, "name": "process_name", "args": {"name": meta.scenario.name}}
    ]
    for s, region in enumerate(facts.stacks):
        events.append(
            {
                "ph": "M",
                "pid": PID,
                "tid": _tid(s),
                "name": "thread_name",
                "args": {"name": f"stack {region.display}"},
            }
        )
        events.append(
            {
                "ph": "M",
                "pid": PID,
                "tid": _tid(s),
                "name": "thread_sort_index",
                "args": {"sort_index": s},
            }
        )

    history = frame_history(facts)
    for node, end in zip(history.nodes, history.ends.tolist(), strict=True):
        # From the callee's first instruction through the one that ends the frame, so
        # a ret that leaves one frame and enters another (a planted return) does not
        # make the two overlap.
        start = 0 if node.how == START else node.entered_step + 1
        stop = n if end < 0 else end + 1
        args: dict[str, Any] = {
            "entered": "at the start"
            if node.how == START
            else f"step {node.entered_step} by {node.how}",
            "stack": facts.stacks[node.stack].name,
            "returned": "never" if end < 0 else f"step {end}",
        }
        where = source.text(node.function)
        if where:
            args["source"] = where
        events.append(
            {
                "ph": "X",
                "pid": PID,
                "tid": _tid(node.stack),
                "name": facts.symbolize(node.function),
                "cat": node.how,
                "ts": start,
                "dur": max(stop - start, 0),
                "args": args,
            }
        )

    events += _thread_tracks(trace, facts)
    switches = facts.switch_steps()
    owner = facts.rsp_owner
    for step in switches.tolist():
        before = int(owner[step])
        # The row after in the same OS thread (another thread may run in between).
        landed = int(facts.threads.next_rows(np.array([step], dtype=np.int64))[0])
        after = int(owner[landed]) if landed < n else facts.final_owner
        names = [facts.stacks[i].name if i >= 0 else "outside" for i in (before, after)]
        events.append(
            {
                "ph": "i",
                "s": "t" if after >= 0 else "g",
                "pid": PID,
                "tid": _tid(max(after, 0)),
                "name": f"switch {names[0]} -> {names[1]}",
                "cat": "switch",
                "ts": step,
                "args": {"step": step, "from": names[0], "to": names[1]},
            }
        )
    result = check(trace, facts)
    for planted in result.planted:
        stack = next((i for i, r in enumerate(facts.stacks) if r.name == planted.region), -1)
        events.append(
            {
                "ph": "i",
                "s": "t" if stack >= 0 else "g",
                "pid": PID,
                "tid": _tid(max(stack, 0)),
                "name": f"planted return -> {planted.target}",
                "cat": "planted",
                "ts": planted.ret_step,
                "args": {
                    "slot": planted.where,
                    "planted_step": planted.planted_step,  # None: before the trace
                    "planted_insn": planted.planted_insn,
                },
            }
        )
    for invariant in result.results:
        for v in invariant.violations:
            stack = int(owner[v.step]) if 0 <= v.step < n else -1
            events.append(
                {
                    "ph": "i",
                    "s": "t" if stack >= 0 else "g",
                    "pid": PID,
                    "tid": _tid(max(stack, 0)),
                    "name": f"violation: {v.invariant}",
                    "cat": "violation",
                    "ts": v.step,
                    "args": {"symbol": v.symbol, "message": v.message},
                }
            )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {
            "scenario": meta.scenario.name,
            "steps": n,
            "time": "1 step = 1 us",
            "stop": meta.stop.reason,
        },
    }


def _thread_tracks(trace: Trace, facts: TraceFacts) -> list[dict[str, Any]]:
    """A threaded program: one track per OS thread, a slice for each turn it ran
    (the scheduler's), below the stack tracks. None for one thread."""
    if "threads" not in trace.metadata.extra or not facts.steps:
        return []
    tids = {int(t["number"]): int(t["tid"]) for t in trace.metadata.threads}
    thread = trace.table(["thread"]).column(0).to_numpy()
    starts = np.concatenate([[0], facts.threads.ends + 1]).astype(np.int64)
    stops = np.append(facts.threads.ends + 1, facts.steps)
    events: list[dict[str, Any]] = []
    base = len(facts.stacks) + 1
    for number in sorted(set(np.unique(thread).tolist()) | set(tids)):
        tid = base + number
        name = f"thread {number} (tid {tids.get(number, '?')})"
        events.append(
            {"ph": "M", "pid": PID, "tid": tid, "name": "thread_name", "args": {"name": name}}
        )
        events.append(
            {
                "ph": "M",
                "pid": PID,
                "tid": tid,
                "name": "thread_sort_index",
                "args": {"sort_index": base + number},
            }
        )
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        number = int(thread[start])
        events.append(
            {
                "ph": "X",
                "pid": PID,
                "tid": base + number,
                "name": f"thread {number} runs",
                "cat": "thread",
                "ts": start,
                "dur": stop - start,
                "args": {"thread": number, "first_step": start, "last_step": stop - 1},
            }
        )
    return events


def write_chrome_trace(trace: Trace, out: Path | TextIO) -> int:
    """Write the JSON to a file (through safe_output: a regular file, whole or not at all;
    never a device or FIFO replaced) or to an open text stream; returns the events."""
    doc = chrome_trace_events(trace)
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n"
    if isinstance(out, Path):
        write_file(out, text.encode("utf-8"))
    else:
        out.write(text)
    return len(doc["traceEvents"])
