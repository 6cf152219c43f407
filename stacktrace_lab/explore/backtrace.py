"""Backtraces at any step: the frames of the running stack and of every suspended one.

Frames come from the call/ret matching of the analysis (`TraceFacts`), not
from unwinding memory: the trace knows every call and every ret, so a frame
is a call (or a planted return that entered a function, or the machine's
start of the entry function) whose return-address slot has not been popped
yet. Each stack region keeps its own chain of frames, so when a green thread
switches away, its frames stay on its stack, suspended, and come back when a
ret on that stack resumes it.

The frames are kept as a persistent linked list: a node per frame, pointing
at its caller's node. One pass over the trace's calls and rets records, per
event, the new innermost node of the stack it touched; the backtrace at step
N is then, per stack, the chain from the last event before N. That history
is what the stepper embeds, so the page and `show` give the same frames.

Rules, per stack (keyed by the return-address slot, an address on it):
- a `call` pushes a frame whose slot is the one the call wrote; frames at or
  below that slot are dropped first (abandoned without a ret, as by a longjmp);
- a `ret` pops every frame whose slot is at or below the popped slot;
- a `ret` that pops a planted address (a stack switch) and lands on a label
  enters that function: a frame with no call. Landing inside a function
  instead resumes the stack's suspended frames.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ..analysis.events import Origin, TraceFacts
from ..symbols import LabelTable
from ..trace.format import TraceMetadata

I64 = npt.NDArray[np.int64]

#: How a frame was entered.
START, CALL, PLANTED = "start", "call", "planted return"


class FrameNode(NamedTuple):
    """One frame: the function it runs and how it was entered."""

    parent: int  # the caller's node, or -1
    stack: int  # index into `facts.stacks`
    function: int  # the address it was entered at
    entered_step: int  # the call or ret that entered it; -1 for the machine's start
    how: str  # START, CALL or PLANTED
    slot: int  # its return-address slot (a call's push; the popped slot of a planted ret)
    return_to: int | None  # where its ret goes back to, when a call pushed it


@dataclass(frozen=True)
class FrameLine:
    """A frame as a backtrace prints it: the function and where in it execution is."""

    function: str
    addr: int  # rip (innermost) or the return address into this frame
    location: str  # `label+offset` of `addr`
    source: str | None  # `file:line` of `addr`, when known
    entered_step: int
    how: str

    def to_json(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "addr": self.addr,
            "location": self.location,
            "source": self.source,
            "entered_step": self.entered_step,
            "how": self.how,
        }


@dataclass(frozen=True)
class StackBacktrace:
    stack: str
    running: bool
    #: Running: the step asked about. Suspended: the last step that ran on this stack.
    at_step: int
    frames: tuple[FrameLine, ...]  # innermost first

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "running": self.running,
            "at_step": self.at_step,
            "frames": [f.to_json() for f in self.frames],
        }


class SourceLines:
    """`file:line` of a code address: its line, or the nearest line at or below it."""

    def __init__(self, meta: TraceMetadata) -> None:
        self._addrs = sorted(meta.lines)
        self._lines = [meta.lines[a] for a in self._addrs]
        self._file = meta.scenario.name
        code = [r for r in meta.regions if r.kind == "code"]
        self._code = code[0] if code else None

    def __call__(self, addr: int) -> str | None:
        if self._code is None or not self._code.contains(addr):
            return None
        i = bisect.bisect_right(self._addrs, addr) - 1
        return f"{self._file}:{self._lines[i]}" if i >= 0 else None


@dataclass(frozen=True)
class FrameHistory:
    """Every frame of the trace and, per event, the new innermost frame of one stack.

    Event `e` happened at step `step[e]` (its instruction ran): from step
    `step[e] + 1` on, stack `stack[e]`'s innermost frame is node `top[e]` (-1: none).
    """

    nodes: tuple[FrameNode, ...]
    step: I64
    stack: I64
    top: I64
    #: The innermost frame of each stack before step 0.
    initial: tuple[int, ...]
    #: Per node, the step whose instruction ended the frame (its ret, or the call or ret
    #: that found it abandoned); -1 while it never ended.
    ends: tuple[int, ...] = ()

    def tops_before(self, step: int) -> list[int]:
        """Each stack's innermost frame node before the instruction at `step` runs."""
        tops = list(self.initial)
        end = int(np.searchsorted(self.step, step, side="left"))
        for s in range(len(tops)):
            mine = np.flatnonzero(self.stack[:end] == s)
            if mine.size:
                tops[s] = int(self.top[mine[-1]])
        return tops

    def chain(self, node: int) -> list[FrameNode]:
        out = []
        while node >= 0:
            out.append(self.nodes[node])
            node = out[-1].parent
        return out


def frame_history(facts: TraceFacts) -> FrameHistory:
    """One pass over the calls and rets of the trace, innermost first per stack.

    The per-event facts are gathered with numpy first, so the loop itself only
    moves Python ints (a few hundred thousand events a second).
    """
    meta = facts.meta
    labels = LabelTable(meta.symbols)
    w, r = facts.writes, facts.returns
    # Calls: the stack and slot they push to, the target, the return address pushed
    # (the call's only write; None if the trace has no such write).
    calls = facts.calls
    call_stack = facts.rsp_stack[calls].tolist()
    call_slot = (facts.rsp[calls] - np.uint64(8)).tolist()
    call_target = facts.call_targets.tolist()
    push = np.searchsorted(w.step, calls)
    has_push = push < len(w)
    has_push[has_push] = w.step[push[has_push]] == calls[has_push]
    pushed = np.where(has_push, w.value[np.clip(push, 0, max(len(w) - 1, 0))], 0) if len(w) else 0
    call_back = [
        int(v) if ok else None
        for v, ok in zip(
            np.broadcast_to(pushed, calls.shape).tolist(), has_push.tolist(), strict=True
        )
    ]
    # Rets: a planted one that lands on a label enters that function.
    ret_stack = facts.rsp_stack[r.step].tolist()
    ret_slot = r.slot.tolist()
    ret_value = r.value.tolist()
    enters = [False] * len(r)
    for i in np.flatnonzero(r.origin == Origin.PLANTED).tolist():
        near = labels.nearest(ret_value[i])
        enters[i] = near is not None and near[1] == 0

    parent: list[int] = []
    stack_of: list[int] = []
    function: list[int] = []
    entered: list[int] = []
    how: list[str] = []
    slot_of: list[int] = []
    back_to: list[int | None] = []
    ends: list[int] = []

    def push_node(p: int, s: int, f: int, step: int, h: str, slot: int, b: int | None) -> int:
        parent.append(p)
        stack_of.append(s)
        function.append(f)
        entered.append(step)
        how.append(h)
        slot_of.append(slot)
        back_to.append(b)
        ends.append(-1)
        return len(parent) - 1

    tops = [-1] * len(facts.stacks)
    first_stack = int(facts.rsp_stack[0]) if facts.steps else -1
    entry = meta.symbols.get(meta.scenario.entry)
    if first_stack >= 0 and entry is not None:
        start_slot = int(facts.rsp[0])
        tops[first_stack] = push_node(-1, first_stack, entry, -1, START, start_slot, facts.sentinel)
    initial = tuple(tops)

    out_step: list[int] = []
    out_stack: list[int] = []
    out_top: list[int] = []
    steps = np.concatenate([calls, r.step])
    n_calls = calls.size
    for e, step in zip(
        np.argsort(steps, kind="stable").tolist(),
        np.sort(steps, kind="stable").tolist(),
        strict=True,
    ):
        is_call = e < n_calls
        i = e if is_call else e - n_calls
        s = call_stack[i] if is_call else ret_stack[i]
        if s < 0:
            continue
        slot = call_slot[i] if is_call else ret_slot[i]
        # Frames at or below the slot are left: returned from, or abandoned.
        top = tops[s]
        while top >= 0 and slot_of[top] <= slot:
            ends[top] = step
            top = parent[top]
        if is_call:
            top = push_node(top, s, call_target[i], step, CALL, slot, call_back[i])
        elif enters[i]:
            top = push_node(top, s, ret_value[i], step, PLANTED, slot, None)
        tops[s] = top
        out_step.append(step)
        out_stack.append(s)
        out_top.append(top)
    nodes = tuple(
        FrameNode(*fields)
        for fields in zip(parent, stack_of, function, entered, how, slot_of, back_to, strict=True)
    )
    return FrameHistory(
        nodes=nodes,
        step=np.array(out_step, dtype=np.int64),
        stack=np.array(out_stack, dtype=np.int64),
        top=np.array(out_top, dtype=np.int64),
        initial=initial,
        ends=tuple(ends),
    )


def last_step_on(facts: TraceFacts, stack: int, before: int) -> int | None:
    """The last step before `before` whose rsp was on `stack` (where a suspended stack left)."""
    hits = np.flatnonzero(facts.rsp_owner[:before] == stack)
    return int(hits[-1]) if hits.size else None


def frame_lines(
    facts: TraceFacts, chain: list[FrameNode], rip: int, source: SourceLines
) -> tuple[FrameLine, ...]:
    """The chain as printed frames: the innermost at `rip`, each outer one at its return address."""
    out = []
    addr: int | None = rip
    for node in chain:
        if addr is None:
            # Entered without a call: nothing says where the outer frame is.
            location, where = "?", None
            addr_value = 0
        else:
            location, where, addr_value = facts.symbolize(addr), source(addr), addr
        out.append(
            FrameLine(
                function=facts.symbolize(node.function),
                addr=addr_value,
                location=location,
                source=where,
                entered_step=node.entered_step,
                how=node.how,
            )
        )
        addr = node.return_to
        if addr == facts.sentinel:
            break
    return tuple(out)


def backtraces(
    facts: TraceFacts, step: int, history: FrameHistory | None = None
) -> list[StackBacktrace]:
    """The backtrace of the stack running at `step`, then of every suspended stack with frames."""
    history = history or frame_history(facts)
    tops = history.tops_before(step)
    running = int(facts.rsp_owner[step]) if 0 <= step < facts.steps else -1
    source = SourceLines(facts.meta)
    rip = int(facts.describe([step])[step].rip) if 0 <= step < facts.steps else 0
    out = []
    order = [running] + [s for s in range(len(tops)) if s != running]
    for s in order:
        if s < 0 or (s != running and tops[s] < 0):
            continue
        chain = history.chain(tops[s])
        if s == running:
            at, where = step, rip
        else:
            left = last_step_on(facts, s, step)
            if left is None:
                continue
            at, where = left, int(facts.describe([left])[left].rip)
        out.append(
            StackBacktrace(
                stack=facts.stacks[s].name,
                running=s == running,
                at_step=at,
                frames=frame_lines(facts, chain, where, source),
            )
        )
    return out


__all__ = [
    "CALL",
    "PLANTED",
    "START",
    "FrameHistory",
    "FrameLine",
    "FrameNode",
    "SourceLines",
    "StackBacktrace",
    "backtraces",
    "frame_history",
]
