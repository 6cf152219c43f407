"""What a report says, gathered once from a trace: the HTML and Markdown render the same data.

`ReportContent` holds the scenario and its source, the stop reason and the
program's output, the check result (invariants, violations, planted
returns) and listings of the steps around each stack switch: a few steps
before and after every planted `ret` and every step that moved rsp to
another stack, each row with rsp and the slots the instruction touched.
Only those windows of rows are read from the trace.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..analysis.events import TraceFacts
from ..analysis.model import CheckResult
from ..layout import Region
from . import switch_picture
from .program import ProgramHeader, program_header
from .switch_picture import SwitchPair
from .threads import threads_summary

#: Steps shown before and after each anchor (a planted ret, a switch).
BEFORE = 6
AFTER = 3
#: At most this many listing windows (a runtime that switches a million times
#: gets its first ones; the page says how many were left out).
MAX_WINDOWS = 8
#: Rows of a long table shown before the rest: folded in the HTML (<details>),
#: cut with a count in the Markdown.
FOLD_ROWS = 12


@dataclass(frozen=True)
class ListingRow:
    step: int
    rip: int
    symbol: str
    insn: str
    rsp: int
    rsp_where: str
    #: `file:line` of the instruction, when the trace knows it.
    source: str | None
    #: The memory the instruction read and wrote, as `read green+32 = hello`.
    touched: tuple[str, ...]
    #: What makes the row notable: "planted return ...", "switch main -> green".
    notes: tuple[str, ...]

    @property
    def highlighted(self) -> bool:
        return bool(self.notes)


@dataclass(frozen=True)
class ListingWindow:
    title: str
    rows: tuple[ListingRow, ...]


@dataclass(frozen=True)
class ReportContent:
    trace: str
    scenario: str
    description: str
    syntax: str
    entry: str
    source: str
    steps: int
    stop_reason: str
    stop_step: int
    stop_detail: str
    stdout: str
    stderr: str
    regions: tuple[Region, ...]
    check: CheckResult
    windows: tuple[ListingWindow, ...]
    windows_left_out: int
    tool: dict[str, str]
    #: A compiled program: its binary, build and recorded range (None for a scenario).
    program: ProgramHeader | None = None
    #: The from→to table of the stack switches, most frequent first, and how many in all.
    switch_pairs: tuple[SwitchPair, ...] = ()
    switches: int = 0
    #: The report leads with the switch picture (many stacks or switches).
    leads_with_switches: bool = False
    #: A threaded program: how many threads, the stack each started on, how often
    #: the scheduler switched between them ("" for one thread).
    threads: str = ""

    @property
    def verdict(self) -> str:
        if self.check.holds:
            return "every invariant holds"
        return f"fails: {', '.join(self.check.failed)} ({self.check.headline})"


def gather(facts: TraceFacts, check: CheckResult) -> ReportContent:
    meta = facts.meta
    windows, left_out = listing(facts)
    return ReportContent(
        trace=str(facts.trace.path),
        scenario=meta.scenario.name,
        description=meta.scenario.description,
        syntax=meta.scenario.syntax,
        entry=meta.scenario.entry,
        source=meta.scenario.source,
        steps=facts.steps,
        stop_reason=meta.stop.reason,
        stop_step=meta.stop.step,
        stop_detail=meta.stop.detail,
        stdout=meta.stdout,
        stderr=meta.stderr,
        regions=meta.regions,
        check=check,
        windows=windows,
        windows_left_out=left_out,
        tool=dict(meta.tool),
        program=program_header(meta, facts.trace.path),
        switch_pairs=tuple(switch_picture.switch_pairs(facts)),
        switches=int(facts.switch_steps().size),
        leads_with_switches=switch_picture.wanted(facts),
        threads=threads_line(facts),
    )


def threads_line(facts: TraceFacts) -> str:
    """`2 threads: 1 (tid 1000) on stack, 2 (tid 1001) on thread_2_stack; 3 thread
    switches (a slice of 10,000 instructions)`, or "" for a program that made no thread."""
    return threads_summary(facts.meta, len(facts.threads.ends))


def listing(facts: TraceFacts) -> tuple[tuple[ListingWindow, ...], int]:
    """The steps around each planted ret and each switch, merged where they overlap."""
    notes: dict[int, list[str]] = {}
    for p in facts.planted_returns:
        if p.planted_step is not None:
            notes.setdefault(p.planted_step, []).append(f"plants {p.target} at {p.where}")
        notes.setdefault(p.ret_step, []).append(f"ret pops planted {p.target} from {p.where}")
    switches = facts.switch_steps()
    names = {i: s.shown_name for i, s in enumerate(facts.stacks)}
    owner = facts.owners
    for step in switches.tolist():
        src = names.get(int(owner[step]), "outside the stacks")
        dst = names.get(int(owner[step + 1]), "outside the stacks")
        notes.setdefault(step, []).append(f"switch: rsp moves from {src} to {dst}")

    anchors = sorted({p.ret_step for p in facts.planted_returns} | set(switches.tolist()))
    spans: list[tuple[int, int]] = []
    for anchor in anchors:
        start, stop = max(anchor - BEFORE, 0), min(anchor + AFTER + 1, facts.steps)
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], stop))
        else:
            spans.append((start, stop))
    shown = spans[:MAX_WINDOWS]
    windows = tuple(_window(facts, start, stop, notes) for start, stop in shown)
    return windows, len(spans) - len(shown)


def _window(facts: TraceFacts, start: int, stop: int, notes: dict[int, list[str]]) -> ListingWindow:
    table = facts.trace.slice(
        start, stop, ["step", "rip", "rsp", "insn", "symbol", "source", "reads", "writes"]
    ).to_pydict()
    rows = []
    for k in range(len(table["step"])):
        step = int(table["step"][k])
        touched = [_access(facts, "read", a) for a in table["reads"][k]]
        touched += [_access(facts, "write", a) for a in table["writes"][k]]
        rsp = int(table["rsp"][k])
        rows.append(
            ListingRow(
                step=step,
                rip=int(table["rip"][k]),
                symbol=str(table["symbol"][k]),
                insn=str(table["insn"][k]),
                rsp=rsp,
                rsp_where=_rsp_where(facts, rsp),
                source=table["source"][k],
                touched=tuple(touched),
                notes=tuple(notes.get(step, ())),
            )
        )
    first, last = rows[0], rows[-1]
    title = f"steps {first.step}-{last.step}: {first.symbol} to {last.symbol}"
    return ListingWindow(title=title, rows=tuple(rows))


def _rsp_where(facts: TraceFacts, rsp: int) -> str:
    """`green[32]`; in a big stack, also the distance from its top, which reads better."""
    where = facts.where(rsp)
    located = facts.locate(rsp)
    if located is not None and located[0].kind == "stack" and located[0].size > 512:
        where += f" (top-{located[0].size - located[1]})"
    return where


def _access(facts: TraceFacts, verb: str, access: dict[str, object]) -> str:
    addr = int(str(access["addr"]))
    data = access["data"]
    raw = data if isinstance(data, bytes) else b""
    where = facts.where(addr)
    if len(raw) == 8:
        value = facts.describe_value(int.from_bytes(raw, "little"))
    else:
        value = raw.hex() if len(raw) <= 16 else raw[:16].hex() + "..."
    return f"{verb} {where} = {value}"
