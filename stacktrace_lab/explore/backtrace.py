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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

import numpy as np
import numpy.typing as npt

from ..analysis.events import TraceFacts
from ..analysis.memory import release_freed_memory
from ..analysis.source import SourceLines
from ..analysis.transfers import Landing
from ..symbols import LabelTable

I64 = npt.NDArray[np.int64]
#: Frame numbers: int32 while they fit (a trace of ten million steps has about a
#: million frames and three million events), else int64.
Ids = npt.NDArray[np.signedinteger[Any]]
#: Queries per block in `frame_history`'s lookups of the latest push at a depth.
_LOOKUP_BLOCK = 1 << 18
I16 = npt.NDArray[np.int16]
U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]
B = npt.NDArray[np.bool_]

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


#: How each frame was entered, by code in `FrameNodes.how_code`.
HOW = (START, CALL, PLANTED, JUMP)


@dataclass(frozen=True)
class FrameNodes(Sequence[FrameNode]):
    """Every frame of a trace as columns (one entry per frame): a `FrameNode` is made
    only for the frames asked for, so a trace with millions of calls costs a few
    numpy arrays, not millions of Python objects."""

    parent: Ids
    stack: I16
    function: U64
    entered_step: I64
    how_code: U8  # index into HOW
    slot: U64
    return_to: U64
    has_return_to: B

    def __len__(self) -> int:
        return int(self.parent.size)

    @overload
    def __getitem__(self, index: int) -> FrameNode: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[FrameNode]: ...
    def __getitem__(self, index: int | slice) -> FrameNode | Sequence[FrameNode]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return FrameNode(
            parent=int(self.parent[index]),
            stack=int(self.stack[index]),
            function=int(self.function[index]),
            entered_step=int(self.entered_step[index]),
            how=HOW[int(self.how_code[index])],
            slot=int(self.slot[index]),
            return_to=int(self.return_to[index]) if self.has_return_to[index] else None,
        )

    def __iter__(self) -> Iterator[FrameNode]:
        return (self[i] for i in range(len(self)))


@dataclass(frozen=True)
class FrameHistory:
    """Every frame of the trace and, per event, the new innermost frame of one stack.

    Event `e` happened at step `step[e]` (its instruction ran): from step
    `step[e] + 1` on, stack `stack[e]`'s innermost frame is node `top[e]` (-1: none).
    """

    nodes: FrameNodes
    step: I64
    stack: I16
    top: Ids
    #: The innermost frame of each stack before step 0.
    initial: tuple[int, ...]
    #: Per node, the step whose instruction ended the frame (its ret, or the call or ret
    #: that found it abandoned); -1 while it never ended.
    ends: I64
    #: Per step (and the final state), the stack the frames belong to: `frame_owners`.
    owners: npt.NDArray[np.int16] | None = None

    def tops_before(self, step: int) -> list[int]:
        """Each stack's innermost frame node before the instruction at `step` runs."""
        tops = np.array(self.initial, dtype=np.int64)
        end = int(np.searchsorted(self.step, step, side="left"))
        last = last_index_per_value(self.stack[:end], len(tops))
        seen = last >= 0
        tops[seen] = self.top[last[seen]]
        return [int(t) for t in tops]

    def chain(self, node: int) -> list[FrameNode]:
        out = []
        while node >= 0:
            out.append(self.nodes[node])
            node = out[-1].parent
        return out


def last_index_per_value(values: npt.NDArray[np.integer[Any]], count: int) -> I64:
    """For each value 0 ..< count, the last index where `values` holds it (-1: nowhere);
    negative values are skipped. One pass, whatever `count` is."""
    last = np.full(count, -1, dtype=np.int64)
    if values.size:
        # Only the last index of each run of equal values can be the last of its value.
        run_ends = np.append(np.flatnonzero(values[1:] != values[:-1]), values.size - 1)
        ends_values = values[run_ends].astype(np.int64)
        keep = ends_values >= 0
        np.maximum.at(last, ends_values[keep], run_ends[keep].astype(np.int64))
    return last


def frame_history(facts: TraceFacts) -> FrameHistory:
    """The frames of every stack, from the calls and rets of the trace, without a loop
    over them.

    Per stack, an event (a call, a ret, or an indirect jmp) first drops the frames
    whose slot is at or below its slot, then may push a frame at that slot. So a
    stack's frames always have increasing slots from the innermost out, and a frame
    lives until the first later event on its stack that drops at a slot at or above
    its own: a next-greater-or-equal search, done by pointer jumping over numpy
    arrays. The innermost frame after an event is then the latest frame pushed at the
    stack's depth after that event.
    """
    meta = facts.meta
    w, r = facts.writes, facts.returns
    # Calls and rets belong to the stack `frame_owners` says: an overflow below a
    # base stays on its stack, and rsp outside every stack stays on the one it left.
    owner = frame_owners(facts)
    transfers = facts.transfers
    release_freed_memory()  # what the classification of the transfers freed
    n_stacks = len(facts.stacks)
    calls = facts.calls
    # Calls: the stack and slot they push to, the target, the return address pushed
    # (the call's only write; none if the trace has no such write).
    push = np.searchsorted(w.step, calls)
    has_push = push < len(w)
    has_push[has_push] = w.step[push[has_push]] == calls[has_push]
    del push
    pushed = facts.call_pushed
    # Rets and indirect jmps, with the transfer the analysis classified (if it did).
    jumps = transfers.step[~transfers.is_ret]
    moved = np.concatenate([r.step, jumps])
    n_calls, n_moved = calls.size, moved.size
    t = np.searchsorted(transfers.step, moved, side="right").astype(np.int64) - 1
    classified = t >= 0
    classified[classified] = transfers.step[t[classified]] == moved[classified]
    t_safe = np.clip(t, 0, None)
    del t
    landing = (
        np.where(classified, transfers.landing[t_safe], 0)
        if len(transfers)
        else np.zeros(moved.shape, np.uint8)
    )
    # Where each transfer landed: the next row of its own thread (events.ThreadRuns).
    landed = facts.threads.next_rows(transfers.step)
    landing_stack = owner[np.minimum(landed, facts.steps)].astype(np.int64)
    landing_slot = transfers.rsp - np.uint64(8)
    del landed
    n_rets = r.step.size
    moved_stack = np.concatenate([owner[r.step], np.full(jumps.shape, -1, dtype=np.int16)])
    moved_slot = np.concatenate([r.slot, np.zeros(jumps.shape, dtype=np.uint64)])
    if len(transfers):
        moved_stack = np.where(classified, landing_stack[t_safe], moved_stack)
        moved_slot = np.where(classified, landing_slot[t_safe], moved_slot)
    del landing_stack, landing_slot
    is_ret = np.arange(moved.size) < n_rets
    # A jump the analysis calls a trampoline, or leaves unclassified, drops no frame.
    drops = is_ret | ~np.isin(landing, [Landing.TRAMPOLINE, Landing.OTHER])
    enters = classified & (landing == Landing.ENTRY)
    del landing
    # The machine's start: a frame for the entry function on the first stack, as
    # an event before every other (the last entry of each array below).
    first_stack = int(owner[0]) if facts.steps else -1
    entry = meta.symbols.get(meta.scenario.entry)
    start = first_stack >= 0 and entry is not None

    def events(calls_part: Any, moved_part: Any, at_start: Any, dtype: Any) -> npt.NDArray[Any]:
        return np.concatenate(
            [
                np.asarray(calls_part, dtype=dtype),
                np.asarray(moved_part, dtype=dtype),
                np.array([at_start], dtype=dtype),
            ]
        )

    # Positions as 32-bit integers where they fit: half the memory on a long trace
    # (steps too, while the trace is shorter than 2**31 steps; widened where kept).
    index = np.int32 if n_calls + n_moved + 1 < np.iinfo(np.int32).max else np.int64
    step_type = np.int32 if facts.steps < np.iinfo(np.int32).max else np.int64
    step = events(calls, moved, -1, step_type)
    del moved
    # Stacks as int16, as `rsp_owner` holds them (widened where they are kept).
    stack = events(owner[calls], moved_stack, first_stack, np.int16)
    slot = events(
        facts.rsp[calls] - np.uint64(8), moved_slot, int(facts.rsp[0]) if facts.steps else 0,
        np.uint64,
    )  # fmt: skip
    drop = events(np.ones(calls.shape, np.bool_), drops, False, np.bool_)
    pushes = events(np.ones(calls.shape, np.bool_), enters, True, np.bool_)
    del moved_stack, moved_slot, drops
    # Every event on a stack in step order (a call, a ret and a jmp never share a step),
    # the start first: `ev` indexes the arrays above.
    order = np.argsort(step[:-1], kind="stable").astype(index)
    order = order[stack[order] >= 0]  # an event on no stack changes no frame
    ev = np.concatenate([np.array([step.size - 1], dtype=index), order]) if start else order
    del order
    m = ev.size

    # The frames, numbered in step order (the start's first): one per pushing event.
    push_ev = ev[pushes[ev]]
    n_nodes = push_ev.size
    # Each frame's fields, taken from the call, the ret or jmp, or the start that
    # pushed it: gathered at the pushes only, never as arrays over every event.
    by_call = push_ev < n_calls
    by_move = ~by_call & (push_ev < n_calls + n_moved)
    pick = (by_call, push_ev[by_call], by_move, push_ev[by_move] - n_calls, ~(by_call | by_move))
    del by_call, by_move
    target = transfers.target[t_safe] if len(transfers) else 0
    node_fields = (
        stack[push_ev],
        _at_pushes(pick, facts.call_targets, target, entry or 0, np.uint64),
        step[push_ev].astype(np.int64),
        _at_pushes(pick, 1, np.where(is_ret, 2, 3), 0, np.uint8),
        slot[push_ev],
        _at_pushes(pick, pushed, 0, facts.sentinel, np.uint64),
        _at_pushes(pick, has_push, False, True, np.bool_),
    )
    del pick, target
    # What only made the events above: a long trace's peak is in what follows.
    del t_safe, classified, is_ret, enters, has_push, jumps
    release_freed_memory()
    node_of = np.full(step.size, -1, dtype=index)
    node_of[push_ev] = np.arange(n_nodes, dtype=index)
    del push_ev

    # Group the events by stack, in step order within each.
    by_stack = np.argsort(stack[ev], kind="stable").astype(index)
    grouped = ev[by_stack]
    g_stack = stack[grouped]
    g_push = pushes[grouped]
    del pushes
    # The grouped slots with one more entry, the search's sentinel (no second copy there).
    g_slot = np.empty(m + 1, dtype=np.uint64)
    np.take(slot, grouped, out=g_slot[:m])
    g_drop = drop[grouped]
    del slot, drop
    release_freed_memory()
    end_op = _next_drop_at_or_above(g_stack, g_slot, g_drop)
    del g_slot, g_drop
    release_freed_memory()  # the search's rounds
    # Depth after each event: frames pushed so far on its stack less those dropped.
    depth: Ids = np.cumsum(
        g_push.astype(index) - np.bincount(end_op[g_push & (end_op < m)], minlength=m + 1)[:m],
        dtype=index,
    )
    stack_first = np.flatnonzero(np.diff(g_stack, prepend=np.int64(-2)) != 0)
    del g_stack
    run = np.diff(np.append(stack_first, m))
    depth -= np.repeat(
        np.where(stack_first > 0, depth[np.maximum(stack_first - 1, 0)], 0).astype(index), run
    )
    # The innermost frame after each event: the latest push on its stack at its depth.
    # (stack, depth) as one number: the stack's first position in `grouped` plus the
    # depth less one. A stack's depths 1 ..= its events fit before the next stack's
    # first position, so the numbers stay unique and below m (32 bits where m is);
    # depth 0 (no frame) is never looked up.
    stride = np.int64(m + 1)
    level = np.repeat(stack_first.astype(index), run)
    level += depth
    level -= 1
    del run, stack_first
    pushing: Ids = np.flatnonzero(g_push).astype(index)
    del g_push
    push_key = level[pushing].astype(np.int64) * stride + pushing
    key_order = np.argsort(push_key, kind="stable")
    push_key, push_pos = push_key[key_order], pushing[key_order]
    del key_order

    def latest_push(at_level: Ids, at_or_before: Ids | None) -> Ids:
        """The position of the latest push at `at_level` no later than `at_or_before`
        (None: each query's own position), or -1; `_LOOKUP_BLOCK` queries at a time,
        so the int64 keys stay small."""
        out: Ids = np.empty(at_level.size, dtype=index)
        for lo in range(0, at_level.size, _LOOKUP_BLOCK):
            want = at_level[lo : lo + _LOOKUP_BLOCK].astype(np.int64)
            key = want * stride
            if at_or_before is None:  # no array of every position (m of them) at the peak
                key += np.arange(lo, lo + want.size, dtype=np.int64)
            else:
                key += at_or_before[lo : lo + _LOOKUP_BLOCK]
            i = np.searchsorted(push_key, key, side="right") - 1
            found = i >= 0
            found[found] &= push_key[i[found]] // stride == want[found]
            out[lo : lo + _LOOKUP_BLOCK] = np.where(found, push_pos[np.clip(i, 0, None)], -1)
        return out

    g_node = node_of[grouped]
    del node_of
    # A pushed frame's caller: the innermost frame once the event dropped what it drops.
    parent_pos = np.where(depth[pushing] > 1, latest_push(level[pushing] - 1, pushing - 1), -1)
    parent = np.empty(n_nodes, dtype=index)
    parent[g_node[pushing]] = np.where(parent_pos >= 0, g_node[np.clip(parent_pos, 0, None)], -1)
    del parent_pos
    ends = np.empty(n_nodes, dtype=np.int64)
    ends_pos = end_op[pushing]
    ends[g_node[pushing]] = np.where(ends_pos < m, step[grouped[np.minimum(ends_pos, m - 1)]], -1)
    del ends_pos, end_op, pushing, grouped
    release_freed_memory()
    top_pos = latest_push(level, None)
    # The lookups are done: their keys go (rebound, as `latest_push` names them).
    push_key, push_pos = push_key[:0].copy(), push_pos[:0].copy()
    del level
    top_pos[depth <= 0] = -1
    del depth
    # The frame at each position, -1 where none: `take` clips -1 to 0 as np.clip
    # did, without three temporaries of m entries at the function's peak.
    innermost = g_node.take(top_pos, mode="clip")
    innermost[top_pos < 0] = -1
    del top_pos, g_node
    top = np.empty(m, dtype=index)
    top[by_stack] = innermost
    del innermost, by_stack
    stack_of, function_of, entered, how_of, slot_of, back_of, has_back_of = node_fields
    nodes = FrameNodes(
        parent=parent,
        stack=stack_of,
        function=function_of,
        entered_step=entered,
        how_code=how_of,
        slot=slot_of,
        return_to=back_of,
        has_return_to=has_back_of,
    )
    out = ev[1:] if start else ev
    initial = [-1] * n_stacks
    if start:
        initial[first_stack] = 0
    history = FrameHistory(
        nodes=nodes,
        step=step[out].astype(np.int64),
        stack=stack[out],
        top=top[1:] if start else top,
        initial=tuple(initial),
        ends=ends,
        owners=owner,
    )
    del step, stack, top, ev, out
    release_freed_memory()
    return history


def _at_pushes(
    pick: tuple[B, Ids, B, Ids, B], calls_part: Any, moved_part: Any, at_start: Any, dtype: Any
) -> npt.NDArray[Any]:
    """A field of each frame, from the call, the ret or jmp, or the start that pushed it.
    `pick`: which frames a call pushed and that call's index, the same for the rets
    and jmps, and the start's frame. A part is an array over its events or one value."""
    by_call, call_at, by_move, move_at, by_start = pick
    out = np.empty(by_call.size, dtype=dtype)
    out[by_call] = calls_part[call_at] if np.ndim(calls_part) else calls_part
    out[by_move] = moved_part[move_at] if np.ndim(moved_part) else moved_part
    out[by_start] = at_start
    return out


def _next_drop_at_or_above(
    stack: npt.NDArray[np.signedinteger[Any]], slot: U64, drop: B
) -> npt.NDArray[np.signedinteger[Any]]:
    """For each event (grouped by stack, in step order within a stack), the position of
    the first later event on the same stack that drops frames at a slot at or above its
    own; `stack.size` when there is none. `slot` has one more entry than `stack`, the
    sentinel's (its value is never looked at), so the search needs no copy of it.

    Two pointer-jumping passes over numpy arrays, each round working only on the
    events still unresolved. First, for every dropping event, the next dropping event
    at a strictly higher slot (a run of drops at the same slot, as a loop's calls
    make, is crossed by doubling: its events move together). Then each event starts
    at the next dropping event and climbs that chain, whose slots only go up, until
    it reaches its own slot. The rounds grow with the log of the longest run and
    with the number of frame levels climbed, never with the number of events.
    """
    m = stack.size
    # Positions as 32-bit integers where they fit: half the memory on a long trace.
    index = np.int32 if m < np.iinfo(np.int32).max else np.int64
    end = index(m)
    # The next dropping event after each position, on the same stack (else `end`).
    first = np.where(drop, np.arange(m, dtype=index), end)
    first = np.minimum.accumulate(first[::-1])[::-1]
    # Index `end` is a sentinel: it points at itself (its slot is never looked at).
    above: Ids = np.empty(m + 1, dtype=index)
    above[: m - 1] = first[1:]
    above[m - 1 :] = end
    del first
    last_of_stack = np.append(np.flatnonzero(stack[1:] != stack[:-1]), m - 1)
    stack_end = np.repeat((last_of_stack + 1).astype(index), np.diff(np.append(-1, last_of_stack)))
    above[:m][above[:m] >= stack_end] = end
    del stack_end, last_of_stack
    found = above.copy()
    # A block of positions at a time, so the rounds' temporaries stay small. The
    # last block first: its pointers are final when an earlier block jumps into it,
    # so the doubling stays logarithmic (each pointer's end is the same either way).
    starts = range(0, m, _LOOKUP_BLOCK)
    for lo in reversed(starts):
        hi = min(lo + _LOOKUP_BLOCK, m)
        todo = (np.flatnonzero(drop[lo:hi] & (above[lo:hi] < end)) + lo).astype(index)
        todo = todo[slot[above[todo]] <= slot[todo]]
        while todo.size:
            above[todo] = above[above[todo]]
            todo = todo[above[todo] < end]
            todo = todo[slot[above[todo]] <= slot[todo]]
    # Climb from the first dropping event after each event to one at or above its slot.
    for lo in starts:
        hi = min(lo + _LOOKUP_BLOCK, m)
        todo = (np.flatnonzero(found[lo:hi] < end) + lo).astype(index)
        todo = todo[slot[found[todo]] < slot[todo]]
        while todo.size:
            found[todo] = above[found[todo]]
            todo = todo[found[todo] < end]
            todo = todo[slot[found[todo]] < slot[todo]]
    return found[:m]


def frame_owners(facts: TraceFacts) -> npt.NDArray[np.int16]:
    """Per step (and one past the last: the final state), the stack whose frames the
    step's calls and rets belong to: the stack rsp is on, counting an overflow below its
    base as that stack; while rsp is outside every stack, the stack it last left, so a
    call made there keeps its frame (and its ret pops it) instead of being lost."""
    owner = facts.owners
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
    last = int(last_steps_on(facts, before, owners)[stack])
    return last if last >= 0 else None


def last_steps_on(
    facts: TraceFacts, before: int, owners: npt.NDArray[np.int16] | None = None
) -> I64:
    """Per stack, the last step before `before` that ran on it (-1: none): by
    `frame_owners`, so a step outside every stack counts for the stack it left."""
    owners = owners if owners is not None else frame_owners(facts)
    return last_index_per_value(owners[:before], len(facts.stacks))


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
    left_on = last_steps_on(facts, step, owners)
    for s in order:
        if s < 0 or (s != running and tops[s] < 0):
            continue
        chain = history.chain(tops[s])
        if s == running:
            at, where = step, rip
        else:
            left = int(left_on[s])
            if left < 0:
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
    "last_steps_on",
]
