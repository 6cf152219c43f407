"""Backtraces at any step: the frames of the running stack and of every suspended one.

Frames come from the call/ret matching of the analysis (`TraceFacts`), not
from unwinding memory: the trace knows every call and every ret, so a frame
is a function entered (by a call, by a transfer the analysis classifies as an
entry, or at the machine's start) whose frame has not been left yet. Each
stack region keeps its own chain of frames, so when a green thread switches
away, its frames stay on its stack, suspended, and come back when it is
resumed.

The frames are kept as a persistent linked list: a node per frame, pointing
at its caller's node. One pass over the trace's calls and rets records, per
event, the new innermost node of the stack it touched; the backtrace at step
N is then, per stack, the chain from the last event before N. That history
is what the stepper embeds, so the page and `show` give the same frames.

Rules, per stack (keyed by the return-address slot, an address on it):
- a `call` pushes a frame whose slot is the one the call wrote; frames at or
  below that slot are dropped first (abandoned without a ret, as by a longjmp);
- a `ret` of a matched call pops every frame whose slot is at or below the
  popped slot;
- every other transfer (a `ret` of a planted address, an indirect `jmp`) goes
  by how the analysis classified its landing (`analysis/transfers.py`): a
  `resume` comes back from the call it resumes and a `return` leaves the
  function it returns from (both drop the frames at or below the landing's
  return slot, on the stack it lands on, so a green thread's frames come back
  when it is resumed); an `entry` enters a function: a frame with no call; a
  `trampoline` (the runtime's `skip`) and `other` add no frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ..analysis.events import TraceFacts
from ..analysis.source import SourceLines
from ..analysis.transfers import Landing
from ..symbols import LabelTable

I64 = npt.NDArray[np.int64]

#: How a frame was entered: the machine's start, a call, a ret or a jump that
#: the analysis classified as entering a function.
START, CALL, PLANTED, JUMP = "start", "call", "planted return", "jump"
#: An outermost frame known only from the return address its callee will return to
#: (a function reached by a ret, like the runtime's `guard`): its entry is not in the chain.
RETURNED_TO = "return"


class FrameNode(NamedTuple):
    """One frame: the function it runs and how it was entered."""

    parent: int  # the caller's node, or -1
    stack: int  # index into `facts.stacks`
    function: int  # the address it was entered at
    entered_step: int  # the call or ret that entered it; -1 for the machine's start
    how: str  # START, CALL, PLANTED or JUMP
    slot: int  # its return-address slot (a call's push; for an entry, just below its rsp)
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
    #: Per step (and the final state), the stack the frames belong to: `frame_owners`.
    owners: npt.NDArray[np.int16] | None = None

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
    w, r = facts.writes, facts.returns
    owner = frame_owners(facts)
    # Calls: the stack and slot they push to, the target, the return address pushed
    # (the call's only write; None if the trace has no such write).
    calls = facts.calls
    call_stack = owner[calls].tolist()
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
    # Rets and indirect jmps the analysis classified by where they land.
    transfers = facts.transfers
    landing_of = dict(zip(transfers.step.tolist(), range(len(transfers)), strict=True))
    landing = transfers.landing.tolist()
    landing_stack = owner[np.minimum(transfers.step + 1, facts.steps)].tolist()
    landing_slot = (transfers.rsp - np.uint64(8)).tolist()
    landing_target = transfers.target.tolist()
    jumps = transfers.step[~transfers.is_ret]
    ret_stack = owner[r.step].tolist()
    ret_slot = r.slot.tolist()

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
    first_stack = int(owner[0]) if facts.steps else -1
    entry = meta.symbols.get(meta.scenario.entry)
    if first_stack >= 0 and entry is not None:
        start_slot = int(facts.rsp[0])
        tops[first_stack] = push_node(-1, first_stack, entry, -1, START, start_slot, facts.sentinel)
    initial = tuple(tops)

    out_step: list[int] = []
    out_stack: list[int] = []
    out_top: list[int] = []
    steps = np.concatenate([calls, r.step, jumps])
    n_calls, n_calls_rets = calls.size, calls.size + r.step.size
    order = np.argsort(steps, kind="stable")
    for e, step in zip(order.tolist(), steps[order].tolist(), strict=True):
        t = landing_of.get(step) if e >= n_calls else None
        if e < n_calls:
            s, slot = call_stack[e], call_slot[e]
        elif t is None:
            # The ret of a matched call (or one the analysis leaves alone).
            s, slot = ret_stack[e - n_calls], ret_slot[e - n_calls]
        else:
            s, slot = landing_stack[t], landing_slot[t]
        if s < 0:
            continue
        top = tops[s]
        kind = Landing(landing[t]) if t is not None else None
        if kind not in (Landing.TRAMPOLINE, Landing.OTHER) or e < n_calls_rets:
            # Frames at or below the slot are left: returned from, resumed past, or
            # abandoned. (A jump that is a trampoline or unclassified leaves them.)
            while top >= 0 and slot_of[top] <= slot:
                ends[top] = step
                top = parent[top]
        if e < n_calls:
            top = push_node(top, s, call_target[e], step, CALL, slot, call_back[e])
        elif kind == Landing.ENTRY and t is not None:
            entered_by = PLANTED if e < n_calls_rets else JUMP
            top = push_node(top, s, landing_target[t], step, entered_by, slot, None)
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
        owners=owner,
    )


def frame_owners(facts: TraceFacts) -> npt.NDArray[np.int16]:
    """Per step (and one past the last: the final state), the stack whose frames the
    step's calls and rets belong to: the stack rsp is on, counting an overflow below its
    base as that stack; while rsp is outside every stack, the stack it last left, so a
    call made there keeps its frame (and its ret pops it) instead of being lost."""
    owner = np.append(facts.rsp_owner, np.int16(facts.final_owner))
    known = owner >= 0
    if known.all() or not known.any():
        return owner
    # Forward fill: the index of the latest known step at or before each step.
    latest = np.where(known, np.arange(owner.size), 0)
    np.maximum.accumulate(latest, out=latest)
    filled = owner[latest]
    filled[: int(np.argmax(known))] = -1  # before rsp was ever on a stack: none
    return filled.astype(np.int16)


def last_step_on(
    facts: TraceFacts, stack: int, before: int, owners: npt.NDArray[np.int16] | None = None
) -> int | None:
    """The last step before `before` that ran on `stack` (where a suspended stack left)."""
    owners = owners if owners is not None else frame_owners(facts)
    hits = np.flatnonzero(owners[:before] == stack)
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
            location, where, addr_value = facts.symbolize(addr), source.text(addr), addr
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
            return tuple(out)
    if addr is not None and facts.is_code(addr):
        # The outermost callee returns into code that no frame accounts for.
        near = LabelTable(facts.meta.symbols).nearest(addr)
        out.append(
            FrameLine(
                function=near[0] if near else f"{addr:#x}",
                addr=addr,
                location=facts.symbolize(addr),
                source=source.text(addr),
                entered_step=-1,
                how=RETURNED_TO,
            )
        )
    return tuple(out)


def backtraces(
    facts: TraceFacts, step: int, history: FrameHistory | None = None
) -> list[StackBacktrace]:
    """The backtrace of the stack running at `step`, then of every suspended stack with frames."""
    history = history if history is not None else frame_history(facts)
    tops = history.tops_before(step)
    owners = history.owners if history.owners is not None else frame_owners(facts)
    running = int(owners[step]) if 0 <= step < facts.steps else -1
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
            left = last_step_on(facts, s, step, owners)
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
    "JUMP",
    "PLANTED",
    "RETURNED_TO",
    "START",
    "FrameHistory",
    "FrameLine",
    "FrameNode",
    "StackBacktrace",
    "backtraces",
    "frame_history",
]
