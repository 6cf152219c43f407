"""What the HTML stepper embeds: steps, registers, memory and the rsp chart, as plain data.

A trace of up to `EMBED_LIMIT` steps is embedded whole. A longer one is
embedded as windows: its start, its end, and a window around each of the
first planted returns (the stack switches), and the page says so.

Sizes stay small because little changes per step: each window carries its
first step's registers and then only the registers each step changed; for
memory, each stack that rsp visits in the window gets one byte range with
its bytes and last writers at the window's start, plus the window's writes,
and the page replays those writes to show any step. 64-bit values are hex
strings (JavaScript numbers stop being exact at 2**53).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..analysis.decoded import decode
from ..analysis.events import TraceFacts, derive_facts
from ..analysis.lookup import RegionLookup
from ..arch import REGISTERS, WORD
from ..explore.backtrace import FrameHistory, frame_history, frame_owners, last_steps_on
from ..explore.memory import MemoryCheckpoints, access_log_between, memory_before_many
from ..explore.provenance import PlantedReturn, flow, planted_returns
from ..explore.registers import register_use
from ..explore.rows import Instruction, instruction_listing, instructions_at
from ..explore.telescope import SLOTS_BELOW_RSP, SLOTS_FROM_RSP, WHOLE_REGION_SLOTS
from ..layout import SENTINEL_RETURN, Region
from ..trace.arrays import numpy_of
from ..trace.reader import Trace

#: Traces up to this many steps are embedded whole.
EMBED_LIMIT = 5000
#: A longer trace: steps embedded either side of each switch, at its start and at its end.
WINDOW_RADIUS = 100
MAX_SWITCH_WINDOWS = 20
#: Largest byte range of one stack embedded per window (a deep recursion is cut to this).
MAX_TRACKED_BYTES = 64 * 1024
#: Points of the rsp chart at most (each a min and max of rsp over its steps).
CHART_POINTS = 1200
#: Bytes of an access's data shown per step.
ACCESS_BYTES_SHOWN = 16

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


def hex64(value: int) -> str:
    return f"{value:#x}"


@dataclass(frozen=True)
class Window:
    start: int
    stop: int  # exclusive


@dataclass(frozen=True)
class Switch:
    """A stack switch as the stepper shows it: a planted return (where it pops from and
    what), or, with `note` set, another step that moved rsp to another stack."""

    ret_step: int
    stack: str | None
    index: int | None
    target: str
    #: The store's step; None: planted before the trace began.
    planted_step: int | None
    #: What the step does, for a switch that is not a planted return ("" for one that is).
    note: str = ""

    @classmethod
    def of(cls, planted: PlantedReturn) -> Switch:
        return cls(
            planted.ret_step,
            planted.stack,
            planted.index,
            planted.target_symbol,
            planted.planted_step,
        )


def choose_windows(
    num_rows: int, switches: Sequence[Switch], limit: int = EMBED_LIMIT
) -> list[Window]:
    """The step ranges to embed: everything, or the start, the end and around each switch."""
    if num_rows <= limit:
        return [Window(0, num_rows)]
    spans = [(0, 2 * WINDOW_RADIUS), (num_rows - 2 * WINDOW_RADIUS, num_rows)]
    spans += [(s.ret_step - WINDOW_RADIUS, s.ret_step + WINDOW_RADIUS) for s in switches]
    merged: list[list[int]] = []
    for start, stop in sorted((max(a, 0), min(b, num_rows)) for a, b in spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [Window(a, b) for a, b in merged]


def _tracked_range(region: Region, rsp: U64) -> tuple[int, int] | None:
    """The bytes of `region` the telescope can show while rsp takes the values `rsp`."""
    inside = rsp[(rsp >= np.uint64(region.base)) & (rsp <= np.uint64(region.top))]
    if len(inside) == 0:
        return None
    first = region.base - region.base % WORD
    last = region.top + (-region.top) % WORD
    if (last - first) // WORD <= WHOLE_REGION_SLOTS:
        return region.base, region.top
    low, high = int(inside.min()), int(inside.max())
    lo = max(low - low % WORD - SLOTS_BELOW_RSP * WORD, region.base)
    hi = min(high - high % WORD + SLOTS_FROM_RSP * WORD, region.top)
    lo = max(lo, hi - MAX_TRACKED_BYTES)  # keep the end near the deepest rsp... and the top
    return lo, hi


def _register_deltas(values: npt.NDArray[np.uint64]) -> list[list[Any]]:
    """Per step after the first: [register index, hex value, ...] of what changed."""
    changed = values[1:] != values[:-1]
    out: list[list[Any]] = []
    for row, mask in enumerate(changed):
        delta: list[Any] = []
        for index in np.flatnonzero(mask).tolist():
            delta += [index, hex64(int(values[row + 1, index]))]
        out.append(delta)
    return out


def _accesses(trace: Trace, window: Window) -> list[list[list[Any]]]:
    """Per step: [["r"|"w", address, size, data hex], ...]."""
    per_step: list[list[list[Any]]] = [[] for _ in range(window.stop - window.start)]
    for kind, column in (("r", "reads"), ("w", "writes")):
        log = access_log_between(trace, column, window.start, window.stop)
        for i in range(len(log)):
            data = log.bytes_of(i)[:ACCESS_BYTES_SHOWN]
            per_step[int(log.step[i]) - window.start].append(
                [kind, hex64(int(log.addr[i])), int(log.size[i]), data[::-1].hex()]
            )
    return per_step


def _window_memory(
    trace: Trace,
    window: Window,
    ranges: dict[str, tuple[int, int]],
    checkpoints: MemoryCheckpoints | None = None,
) -> dict[str, Any]:
    """Each tracked stack's bytes and slot writers at the window's start; the window's writes.

    With `checkpoints` (a served trace), from the nearest checkpoint before the
    window instead of a replay of every write since step 0.
    """
    names = list(ranges)
    found = [
        checkpoints.before(lo, hi, window.start) if checkpoints is not None else None
        for lo, hi in (ranges[n] for n in names)
    ]
    if any(h is None for h in found):
        found = list(
            memory_before_many(
                trace, [(lo, hi, window.start) for lo, hi in (ranges[n] for n in names)]
            )
        )
    histories = [h for h in found if h is not None]
    stacks = {}
    for name, history in zip(names, histories, strict=True):
        lo, hi = ranges[name]
        # One writer per 8-byte slot, slots aligned like the telescope's.
        writers = []
        addr = lo
        while addr < hi:
            end = min(addr - addr % WORD + WORD, hi)
            writers.append(int(history.writers[addr - lo : end - lo].max()))
            addr = end
        stacks[name] = {
            "lo": hex64(lo),
            "hi": hex64(hi),
            "bytes": history.values.tobytes().hex(),
            "writers": writers,
        }
    log = access_log_between(trace, "writes", window.start, window.stop)
    writes = []
    for i in range(len(log)):
        addr, size = int(log.addr[i]), int(log.size[i])
        if any(addr < hi and addr + size > lo for lo, hi in ranges.values()):
            writes.append([int(log.step[i]), hex64(addr), log.bytes_of(i).hex()])
    return {"stacks": stacks, "writes": writes}


def _lane_of(rsp: U64, lanes: list[tuple[str, int, int]], stacks: tuple[Region, ...]) -> I64:
    """The lane index of each rsp value: its stack's lane, or the last ("outside") lane."""
    names = [name for name, _, _ in lanes]
    # The first stack listed wins where regions touch.
    laned = [region for region in stacks if region.name in names]
    lane_of_region = np.array([names.index(r.name) for r in laned] + [len(lanes) - 1])
    found = RegionLookup(laned, with_top=True).index(rsp)
    lane: I64 = lane_of_region[found].astype(np.int64)  # -1 picks the last: outside
    return lane


def rsp_chart(trace: Trace, windows: list[Window]) -> dict[str, Any]:
    """The rsp chart: one lane per stack rsp visits, min/max of rsp per point, in lane units.

    Two passes over the rsp column, a row group at a time: the range of rsp in
    each stack, then each point's min and max position in its lane.
    """
    stacks = trace.metadata.stacks
    low: dict[str, int] = {}
    high: dict[str, int] = {}
    lookup = RegionLookup(stacks, with_top=True)
    # Per stack (the last entry: outside every stack), the range of rsp in it.
    lows = np.full(len(stacks) + 1, np.iinfo(np.uint64).max, dtype=np.uint64)
    highs = np.zeros(len(stacks) + 1, dtype=np.uint64)
    seen = np.zeros(len(stacks) + 1, dtype=np.bool_)
    for group in trace.iter_row_groups(["rsp"]):
        rsp = numpy_of(group.column("rsp"))
        owner = lookup.index(rsp)  # -1 (outside) is the last entry
        np.minimum.at(lows, owner, rsp)
        np.maximum.at(highs, owner, rsp)
        seen[owner] = True
    names = [r.name for r in stacks] + (["outside"] if stacks else [])
    shown = {r.name: r.shown_name for r in stacks}  # a lane's label: `thread 2 stack`
    for k, name in enumerate(names):
        if seen[k]:
            low[name], high[name] = int(lows[k]), int(highs[k])
    order = [r.name for r in stacks if r.name in low] + (["outside"] if "outside" in low else [])
    lanes = [(name, low[name], high[name]) for name in order]
    if not lanes or lanes[-1][0] != "outside":
        lanes_with_outside = [*lanes, ("outside", 0, 0)]
    else:
        lanes_with_outside = lanes
    n = trace.num_rows
    buckets = max(min(n, CHART_POINTS), 1)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    y_min = np.full(buckets, np.inf)
    y_max = np.full(buckets, -np.inf)
    offset = 0
    for group in trace.iter_row_groups(["rsp"]):
        rsp = numpy_of(group.column("rsp"))
        lane = _lane_of(rsp, lanes_with_outside, stacks)
        lo = np.array([lo for _, lo, _ in lanes_with_outside], dtype=np.float64)[lane]
        span = np.array([max(hi - lo, 1) for _, lo, hi in lanes_with_outside], dtype=np.float64)
        # y in lane units: lane k spans [k, k + 1); a higher rsp sits higher in its lane.
        y = lane + 0.1 + 0.8 * (rsp.astype(np.float64) - lo) / span[lane]
        bucket = np.searchsorted(edges, np.arange(offset, offset + len(rsp)), side="right") - 1
        np.minimum.at(y_min, bucket, y)
        np.maximum.at(y_max, bucket, y)
        offset += len(rsp)
    points = [
        [int(edges[b]), round(float(y_min[b]), 4), round(float(y_max[b]), 4)]
        for b in range(buckets)
        if np.isfinite(y_min[b])
    ]
    return {
        "steps": n,
        "lanes": [
            {"name": shown.get(name, name), "lo": hex64(lo), "hi": hex64(hi)}
            for name, lo, hi in lanes
        ],
        "points": points,
        "embedded": [[w.start, w.stop] for w in windows],
    }


def _registers_after(trace: Trace, window: Window) -> list[int]:
    """The registers once the window's last step has run (its "after" column)."""
    if window.stop < trace.num_rows:
        row = trace.slice(window.stop, window.stop + 1, list(REGISTERS)).to_pylist()[0]
        return [int(row[r]) for r in REGISTERS]
    return [int(trace.metadata.final.get(r, 0)) for r in REGISTERS]


def _windows_note(n: int, windows: list[Window], switches: Sequence[Switch]) -> str:
    """What the page says when it holds only windows of the trace."""
    embedded = sum(w.stop - w.start for w in windows)
    if not switches:
        around = "it has no ret that pops a planted address"
    elif len(switches) == 1:
        around = f"{WINDOW_RADIUS} steps either side of its one ret that pops a planted address"
    else:
        first = "the first " if len(switches) >= MAX_SWITCH_WINDOWS else "its "
        around = (
            f"{WINDOW_RADIUS} steps either side of {first}{len(switches)} rets that pop "
            "a planted address"
        )
    return (
        f"This trace has {n:,} steps, too many to embed whole: {embedded:,} steps are embedded "
        f"in {len(windows)} windows: its start, its end and {around}."
    )


@dataclass(frozen=True)
class FrameContext:
    """The call/ret facts and frame history a window's backtraces come from."""

    facts: TraceFacts
    history: FrameHistory

    @classmethod
    def of(cls, trace: Trace, facts: TraceFacts | None = None) -> FrameContext:
        """From the analysis pass `facts` of `trace` if given, else from a new one."""
        facts = facts if facts is not None else derive_facts(trace)
        return cls(facts, frame_history(facts))


def _backtrace_data(frames: FrameContext, window: Window) -> dict[str, Any]:
    """What the page needs to show every stack's backtrace at any step of the window.

    `tops0`: each stack's innermost frame before the window's first step;
    `events`: [step, stack, innermost frame from step + 1 on] inside the window;
    `left0`: for each stack, [step, rip] of the last step before the window that
    ran on it (where a suspended stack left), or null; `frames`: the frames
    those name, with their callers: id -> [caller id, stack, function, how,
    entered step, return address or null].
    """
    facts, history = frames.facts, frames.history
    tops0 = history.tops_before(window.start)
    lo = int(np.searchsorted(history.step, window.start, side="left"))
    hi = int(np.searchsorted(history.step, window.stop, side="left"))
    events = [
        [int(history.step[e]), int(history.stack[e]), int(history.top[e])] for e in range(lo, hi)
    ]
    wanted = {t for t in tops0 if t >= 0} | {e[2] for e in events if e[2] >= 0}
    nodes: dict[str, list[Any]] = {}
    todo = sorted(wanted)
    while todo:
        node_id = todo.pop()
        if str(node_id) in nodes:
            continue
        node = history.nodes[node_id]
        nodes[str(node_id)] = [
            node.parent,
            node.stack,
            facts.symbolize(node.function),
            node.how,
            node.entered_step,
            hex64(node.return_to) if node.return_to is not None else None,
        ]
        if node.parent >= 0:
            todo.append(node.parent)
    owners = history.owners if history.owners is not None else frame_owners(facts)
    left0: list[list[Any] | None] = []
    left_steps = last_steps_on(facts, window.start, owners).tolist()
    rips = facts.describe([step for step in left_steps if step >= 0])
    for step in left_steps:
        left0.append([step, hex64(rips[step].rip)] if step >= 0 else None)
    return {
        "tops0": tops0,
        "events": events,
        "left0": left0,
        "frames": nodes,
        "owner": _owner_runs(facts, owners, window),
    }


def _owner_runs(
    facts: TraceFacts, owners: npt.NDArray[np.int16], window: Window
) -> list[list[int]]:
    """[start, stop, stack]: the runs of steps in the window whose frames belong to another
    stack than the one rsp is in (an overflow below a stack's base, rsp outside every
    stack), so the page keeps showing them on the stack they were made on."""
    inside = facts.rsp_stack[window.start : window.stop]
    kept = owners[window.start : window.stop]
    differs = np.flatnonzero(inside != kept)
    runs: list[list[int]] = []
    for k in differs.tolist():
        step, stack = window.start + k, int(kept[k])
        if runs and runs[-1][1] == step and runs[-1][2] == stack:
            runs[-1][1] = step + 1
        else:
            runs.append([step, step + 1, stack])
    return runs


def embedded_window(
    trace: Trace,
    window: Window,
    frames: FrameContext | None,
    checkpoints: MemoryCheckpoints | None = None,
) -> dict[str, Any]:
    """One window of steps as the page replays it (see the module's docstring).

    Without `frames` (a served trace whose analysis pass is not made yet) its
    backtraces are null: the page shows them once it fetches the window again."""
    meta = trace.metadata
    table = trace.slice(window.start, window.stop, list(REGISTERS))
    values = np.column_stack([numpy_of(table.column(r)) for r in REGISTERS])
    rsp = values[:, REGISTERS.index("rsp")]
    ranges = {}
    for region in meta.stacks:
        tracked = _tracked_range(region, rsp)
        if tracked is not None:
            ranges[region.name] = tracked
    memory = _window_memory(trace, window, ranges, checkpoints)
    inside = range(window.start, window.stop)
    outside = sorted(
        {
            step
            for stack in memory["stacks"].values()
            for step in stack["writers"]
            if step >= 0 and step not in inside
        }
    )
    # The page finds their text and flow in the listing by address.
    writers = {str(s): hex64(i.addr) for s, i in sorted(instructions_at(trace, outside).items())}
    return {
        "start": window.start,
        "stop": window.stop,
        "regs0": [hex64(int(v)) for v in values[0]],
        "deltas": _register_deltas(values),
        "after_last": [hex64(v) for v in _registers_after(trace, window)],
        "access": _accesses(trace, window),
        **memory,
        "writers": writers,
        "bt": _backtrace_data(frames, window) if frames is not None else None,
        # Only for a threaded program: pages of other programs stay as they were.
        **({"threads": runs} if (runs := _thread_runs(trace, window)) else {}),
    }


def _thread_runs(trace: Trace, window: Window) -> list[list[int]]:
    """[first step, thread number] of each run of one thread's rows in the window, for
    a threaded program (the page names the thread of each step); [] without threads."""
    if "threads" not in trace.metadata.extra:
        return []
    column = numpy_of(trace.slice(window.start, window.stop, ["thread"]).column("thread"))
    starts = np.flatnonzero(np.diff(column.astype(np.int64), prepend=-1))
    return [[window.start + int(k), int(column[k])] for k in starts]


def source_lines(trace: Trace) -> list[list[str]]:
    """[address, "file:line"] of every source line's first instruction, in address order."""
    return [
        [hex64(e.addr), f"{e.file}:{e.line}"]
        for e in sorted(trace.metadata.lines, key=lambda e: e.addr)
    ]


def stepper_data(
    trace: Trace,
    limit: int = EMBED_LIMIT,
    switches: Sequence[Switch] | None = None,
    serve: dict[str, str] | None = None,
    facts: TraceFacts | None = None,
) -> dict[str, Any]:
    """Everything the stepper page needs about `trace`, as JSON-ready data.

    `switches`: the planted returns, when the caller has found them already
    (the report has); else the trace is scanned for them here. `serve`: the
    URLs of a server that hands out windows (`stacktrace-lab serve`); then no
    window is embedded and the page fetches each as it needs it. `facts`: the
    analysis pass the backtraces come from, when the caller has made it.
    """
    meta = trace.metadata
    n = trace.num_rows
    if serve:
        # A served page gets its switches and rsp chart later (`overview`): both need
        # every step read, and the page should come before that.
        switches = []
    elif switches is None:
        found = planted_returns(trace, limit=MAX_SWITCH_WINDOWS if n > limit else None)
        switches = [Switch.of(p) for p in found]
    elif n > limit:
        switches = switches[:MAX_SWITCH_WINDOWS]
    windows = [] if serve else choose_windows(n, switches, limit)
    complete = serve is not None or windows == [Window(0, n)]
    frames = FrameContext.of(trace, facts) if windows else None
    window_data = [embedded_window(trace, window, frames) for window in windows if frames]
    # Instructions of the steps that wrote tracked memory before a window began
    # and are not embedded themselves, for the telescope's "last written" column.
    writers: dict[str, str] = {}  # step -> the address of its instruction
    for window in window_data:
        writers.update(window["writers"])
    listing = instruction_listing(trace)
    use = register_use((i.addr, i.data) for i in listing)
    first_symbols: dict[int, str] = {}
    for name, addr in meta.symbols.items():
        first_symbols.setdefault(addr, name)
    if serve:
        note = (
            f"Served from {trace.path.name}: any of its {n:,} steps can be reached; "
            "steps are read from the trace file as you move."
        )
    elif complete:
        note = f"All {n} steps are embedded."
    else:
        note = _windows_note(n, windows, switches)
    return {
        "format": 1,
        "scenario": meta.scenario.name,
        "description": meta.scenario.description,
        "total_steps": n,
        "complete": complete,
        "note": note,
        "registers": list(REGISTERS),
        "regions": [
            {"name": r.name, "kind": r.kind, "base": hex64(r.base), "size": r.size}
            # What a person calls it, where that is not its name (`thread 2 stack`).
            | ({"shown": r.shown_name} if r.shown_name != r.name else {})
            for r in meta.regions
        ],
        "symbols": [[hex64(a), name] for a, name in sorted(first_symbols.items())],
        "sentinel": hex64(int(meta.options.get("sentinel_return", SENTINEL_RETURN))),
        "telescope": {
            "whole_region_slots": WHOLE_REGION_SLOTS,
            "below_rsp": SLOTS_BELOW_RSP,
            "from_rsp": SLOTS_FROM_RSP,
        },
        "listing": [
            {
                "addr": hex64(i.addr),
                "symbol": i.symbol,
                "insn": i.text,
                "source": _source_text(meta.source_line(i.addr)),
                # The registers it reads and writes, for the find buttons' "access".
                **(
                    {"regs": [sorted(use[i.addr].reads), sorted(use[i.addr].writes)]}
                    if i.addr in use
                    else {}
                ),
                "flow": flow_data(i),
            }
            for i in listing
        ],
        "switches": switch_data(switches),
        "windows": window_data,
        "max_switches": MAX_SWITCH_WINDOWS,
        "writers": writers,
        "lines": source_lines(trace),
        "chart": None if serve else rsp_chart(trace, windows),
        **({"serve": serve} if serve else {}),
    }


def switch_data(switches: Sequence[Switch]) -> list[dict[str, Any]]:
    """The switches as the page reads them."""
    return [
        {
            "ret_step": s.ret_step,
            "stack": s.stack,
            "index": s.index,
            "target": s.target,
            "planted_step": s.planted_step,
            "note": s.note,
        }
        for s in switches
    ]


def flow_data(instruction: Instruction) -> dict[str, str]:
    """What the page's provenance chain needs of an instruction, decided from its bytes by
    `explore.provenance.flow` as who-wrote decides it: its `kind` (unless "other"),
    `source`, `dest` and `how` (see `Flow`), each left out when empty."""
    facts = flow(decode(instruction.addr, instruction.data))
    out = {"kind": instruction.kind} if instruction.kind not in ("", "other") else {}
    for key, value in (("source", facts.source), ("dest", facts.dest), ("how", facts.how)):
        if value is not None:
            out[key] = value
    return out


def _source_text(line: tuple[str, int] | None) -> str:
    """`file:line` for the listing, empty where the trace knows no line."""
    return f"{line[0]}:{line[1]}" if line else ""
