"""The invariants: each a pure function from a trace's facts to its findings.

Every function here has the same shape, `(TraceFacts) -> Findings`: it reads
the events of the shared pass (`events.derive_facts`, and the classified
landings of `transfers.classify`), finds the steps where its rule breaks with
numpy, and hands them to `causes.grouped` as `Items`: per violation its step, its
kind of mistake, its code site and, when it follows from another violation,
that one (its root). `grouped` turns them into causes (one per invariant,
site and kind, with a count and the first and last step), consequences listed
under their cause, and at most `MAX_VIOLATIONS` violations, each with its
message and source line. `INVARIANTS` is the one registry; `check.check` runs
it. The rules are stated in docs/invariants.md.

- `alignment` (in `alignment.py`): rsp % 16 == 0 before every call; rsp % 16 == 8 where a
  function is entered by a switch (`transfers.Landing.ENTRY`) unless it
  realigns rsp before its first call. Resumes, returns, trampolines and other
  landings have no rule of their own; a misaligned call inside a function
  entered misaligned is a consequence of that entry.
- `ret-source`: every ret pops what its call pushed, a planted address that
  points into the code, or the sentinel under the entry function.
- `stack-bounds`: base <= rsp <= top of some stack; every write inside a
  declared stack or data region; below a stack's base is an overflow.
- `callee-saved`: at every resume of a call (its own ret, a re-pushed copy,
  an indirect jmp, longjmp), rbx, rbp and r12-r15 equal their values before
  the call; calls never resumed are counted, not checked.
- `stop`: the run did not end in a fault or at max_steps, unless the
  scenario's [expect] stop names that reason.
- `expect`: the scenario's [expect]: stdout, stop reason, and each
  [[expect.ret]] one of the planted returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..arch import CALLEE_SAVED, WORD
from ..layout import Region, slot_name
from .alignment import alignment
from .causes import Items, code_at, grouped, simple
from .events import _BLOCK, TraceFacts, stack_index
from .kinds import I64, U64, B, Kind, Origin
from .lookup import RegionLookup
from .model import MAX_VIOLATIONS, Findings
from .saves import advices, saves_and_restores
from .transfers import Landing, saved_stack_pointer

Check = Callable[[TraceFacts], Findings]


@dataclass(frozen=True)
class Invariant:
    id: str
    summary: str
    check: Check


# --- ret-source --------------------------------------------------------------


def ret_source(facts: TraceFacts) -> Findings:
    r = facts.returns
    unwritten = np.flatnonzero(r.origin == Origin.UNWRITTEN)
    items = Items()
    messages: list[Callable[[], str]] = []
    ret_rips = facts.rips_at(r.step[unwritten])
    sites: dict[int, int] = {}  # ret rip -> site, decided by its first occurrence
    for k, i in enumerate(unwritten.tolist()):
        # The mistake is where the stack pointer the switch loaded was saved, if found.
        rip = int(ret_rips[k])
        made = saved_stack_pointer(facts, int(r.step[i])) if k < MAX_VIOLATIONS else -1
        if rip not in sites:
            sites[rip] = facts.writes_rip(made) if made >= 0 else rip
        items.add(int(r.step[i]), "unwritten-slot", sites[rip])
        messages.append(_unwritten_message(facts, i, made))
    planted = facts.planted_steps
    code = [reg for reg in facts.meta.regions if reg.kind == "code"]
    values = r.value[planted]
    if code:
        in_code = (values >= np.uint64(code[0].base)) & (values < np.uint64(code[0].top))
    else:
        in_code = np.zeros(values.shape, dtype=np.bool_)
    not_code = planted[~in_code & (values != np.uint64(facts.sentinel))]
    store_rips = facts.rips_at(facts.writes.step[r.writer[not_code]])
    for k, i in enumerate(not_code.tolist()):
        # A switch that loaded a stack pointer saved a few bytes off the return address
        # a call pushed pops the data beside it: the mistake is where it was saved.
        off_by = _saved_off_a_return_address(facts, i) if k < MAX_VIOLATIONS else None
        if off_by is not None:
            items.add(int(r.step[i]), "saved-stack-pointer", facts.writes_rip(off_by[0]))
        else:
            items.add(int(r.step[i]), "planted-data", int(store_rips[k]))
        messages.append(_planted_data_message(facts, i, off_by))
    notes = []
    before = int(np.count_nonzero(r.origin == Origin.PLANTED_BEFORE))
    if before:
        notes.append(
            f"{before} ret{'s pop code addresses' if before != 1 else ' pops a code address'} "
            "planted before the trace began (listed with the planted returns; the store is "
            "not in the trace)"
        )
    return grouped(facts, "ret-source", items, lambda i: messages[i](), notes)


def _unwritten_message(facts: TraceFacts, i: int, made: int) -> Callable[[], str]:
    def text() -> str:
        r = facts.returns
        value, slot = int(r.value[i]), int(r.slot[i])
        saved = ""
        if made >= 0:
            made_step = int(facts.writes.step[made])
            info = facts.describe([made_step])[made_step]
            saved = (
                f"; rsp was loaded from the stack pointer saved at step {made_step} by "
                f"`{info.insn}`{code_at(facts, info.rip)}"
            )
        if facts.meta.start is not None and facts.steps and slot >= int(facts.rsp[0]):
            # Live stack when a `--from` trace began: what it held then is all we know.
            return (
                f"ret pops {value:#x} from {facts.where(slot)}, which held it when the trace "
                f"began (before row 0) and nothing in the trace wrote since: not an address "
                f"in the code, so not a return address{saved}"
            )
        begun = " since the trace began" if facts.meta.start is not None else ""
        return (
            f"ret pops {value:#x} from {facts.where(slot)}, a slot nothing in the program "
            f"wrote{begun}: no call pushed a return address there and no store planted one{saved}"
        )

    return text


#: How far from the slot a ret popped a return address pushed by a call is looked for.
_OFF_BY = (-8, 8, -16, 16)


def _saved_off_a_return_address(facts: TraceFacts, i: int) -> tuple[int, int, int] | None:
    """For ret `i`, which popped data: when rsp came from a stack pointer saved in
    memory (a switch) and a slot a few bytes from the popped one holds the return
    address a `call` pushed, the stack pointer was saved that many bytes off:
    (the write that saved it, the offset, the call's step). Else None."""
    r = facts.returns
    ret_step, slot = int(r.step[i]), int(r.slot[i])
    made = saved_stack_pointer(facts, ret_step)
    if made < 0:
        return None
    w = facts.writes
    for off in _OFF_BY:
        hits = np.flatnonzero((w.addr == np.uint64(slot + off)) & (w.step < ret_step))
        if not hits.size:
            continue
        last = int(hits[-1])
        step = int(w.step[last])
        if int(w.size[last]) == WORD and int(facts.kind_at(np.array([step]))[0]) == Kind.CALL:
            return made, -off, step
    return None


def _planted_data_message(
    facts: TraceFacts, i: int, off_by: tuple[int, int, int] | None = None
) -> Callable[[], str]:
    def text() -> str:
        r = facts.returns
        value, slot = int(r.value[i]), int(r.slot[i])
        store_step = int(facts.writes.step[r.writer[i]])
        store = facts.describe([store_step])[store_step]
        popped = (
            f"ret pops {facts.describe_value(value)} from {facts.where(slot)}, planted at "
            f"step {store.step} by `{store.insn}`{code_at(facts, store.rip)}, but that is not an "
            "address in the code"
        )
        if off_by is None:
            return popped + ": the store planted data where a return address belongs"
        made, off, call_step = off_by
        made_step = int(facts.writes.step[made])
        info = facts.describe([made_step, call_step])
        saved, call = info[made_step], info[call_step]
        return (
            f"{popped}. The return address is {abs(off)} bytes "
            f"{'below' if off > 0 else 'above'}, at {facts.where(slot - off)}, pushed by the "
            f"call at step {call_step} in {call.symbol}: rsp was loaded from the stack pointer "
            f"saved at step {made_step} by `{saved.insn}`{code_at(facts, saved.rip)}, which "
            f"is {abs(off)} bytes off, so the ret popped the slot "
            f"{'above' if off > 0 else 'below'} the return address"
        )

    return text


# --- stack-bounds ------------------------------------------------------------


def stack_bounds(facts: TraceFacts) -> Findings:
    writes = facts.writes
    stray = _stray_writes(facts)
    stray_addr = writes.addr[stray]
    stray_step = writes.step[stray]

    # Every step with rsp outside the stacks (the final state counts as step n), each
    # attributed to the instruction that moved it there, the step before.
    final_out = stack_index(facts.stacks, np.array([facts.final_rsp], dtype=np.uint64))[0] < 0
    outside = np.append(facts.rsp_stack < 0, final_out)
    out_steps = np.flatnonzero(outside).astype(np.int64)
    out_rsp = np.full(out_steps.shape, facts.final_rsp, dtype=np.uint64)
    before_end = out_steps < facts.steps
    out_rsp[before_end] = facts.rsp[out_steps[before_end]]
    # A run of such steps is one finding, at the instruction that started it.
    run_start = np.ones(out_steps.shape, dtype=np.bool_)
    run_start[1:] = np.diff(out_steps) > 1

    # Below a stack's base (and above the region under it) is an overflow of that stack.
    addrs = np.concatenate([stray_addr, out_rsp])
    steps = np.concatenate([stray_step, np.maximum(out_steps - 1, 0)])
    is_write = np.arange(addrs.size) < stray.size
    first_of_run = np.concatenate([np.ones(stray.size, dtype=np.bool_), run_start])
    above = facts.overflowed(addrs)

    found: list[tuple[int, str, str]] = []
    # Only the stacks overflowed, each found once: not a pass per stack.
    for k in np.unique(above[above >= 0]).tolist():
        hit = np.flatnonzero(above == k)
        step, what = _overflow(facts.stacks[k], hit, addrs, steps, is_write)
        found.append((step, "overflow", what))
    others = np.flatnonzero((above < 0) & first_of_run)
    for i in others.tolist():
        addr = int(addrs[i])
        if is_write[i]:
            size = int(writes.size[stray[i]])
            what = f"writes {size} bytes at {addr:#x}, {_outside(facts, addr)}"
        else:
            what = f"moves rsp to {addr:#x}, outside every stack ({_outside(facts, addr)})"
        found.append((int(steps[i]), "outside", what))
    return simple(facts, "stack-bounds", found)


def _stray_writes(facts: TraceFacts) -> I64:
    """Indices of the writes not wholly inside one declared stack or data region.

    Each write is looked up in the first region listed that holds its address (one
    binary search, however many regions); only the writes that do not fit there
    (strays, and a write running from one region into an overlapping one) are
    tried against every region, as the rule says."""
    writes = facts.writes
    regions = [r for r in facts.meta.regions if r.kind != "code"]
    lookup = RegionLookup(regions, with_top=False)
    tops = np.array([r.top for r in regions] + [0], dtype=np.uint64)  # [-1]: in none
    inside = np.zeros(len(writes), dtype=np.bool_)
    for lo in range(0, len(writes), _BLOCK):
        addr = writes.addr[lo : lo + _BLOCK]
        end = addr + writes.size[lo : lo + _BLOCK].astype(np.uint64)
        inside[lo : lo + _BLOCK] = end <= tops[lookup.index(addr)]
    rest = np.flatnonzero(~inside)
    addr = writes.addr[rest]
    end = addr + writes.size[rest].astype(np.uint64)
    fits = np.zeros(rest.shape, dtype=np.bool_)
    for region in regions:
        fits |= (addr >= np.uint64(region.base)) & (end <= np.uint64(region.top))
    stray: I64 = rest[~fits].astype(np.int64)
    return stray


def _overflow(stack: Region, hit: I64, addrs: U64, steps: I64, is_write: B) -> tuple[int, str]:
    """One finding per overflowed stack: where it starts, how far writes and rsp go."""
    depth = np.int64(stack.base) - addrs[hit].astype(np.int64)
    order = np.lexsort((~is_write[hit], steps[hit]))  # by step; a write before rsp
    first = int(hit[order[0]])
    max_depth = int(depth.max())
    name = stack.name
    what = f"{stack.label}, " if stack.label else ""  # calloc(48) in main
    parts = [
        f"{name} ({what}{stack.size} bytes) overflows by {max_depth} bytes: here "
        f"{_access(stack, first, addrs, is_write)}, {int(depth[order[0]])} bytes below its base"
    ]
    for kind, mask in (("write", is_write[hit]), ("rsp", ~is_write[hit])):
        if not mask.any():
            continue
        deepest = np.lexsort((steps[hit][mask], -depth[mask]))[0]
        where = slot_name(name, -int(depth[mask][deepest]))
        at = int(steps[hit][mask][deepest])
        if kind == "write":
            count = int(mask.sum())
            many = "s land" if count > 1 else " lands"
            parts.append(f"{count} write{many} below the base, the deepest at {where} (step {at})")
        elif is_write[first] or int(depth[mask][deepest]) > int(depth[order[0]]):
            parts.append(f"rsp goes down to {where} (step {at})")
    parts.append(f"{name} needs at least {stack.size + max_depth} bytes")
    return int(steps[first]), "; ".join(parts)


def _access(stack: Region, i: int, addrs: npt.NDArray[np.uint64], is_write: B) -> str:
    addr = int(addrs[i])
    where = f"{slot_name(stack.name, addr - stack.base)} ({addr:#x})"
    return f"a write at {where}" if is_write[i] else f"rsp moves to {where}"


def _outside(facts: TraceFacts, addr: int) -> str:
    located = facts.locate(addr)
    if located is not None:
        region, index = located
        return f"in {region.kind} region {region.name} at index {index}"
    for region in facts.meta.regions:
        if region.kind == "data" and region.top <= addr < region.top + 4096:
            return f"{addr - region.top} bytes past the end of data region {region.name}"
    return "outside every declared region"


# --- callee-saved ------------------------------------------------------------

SAVED_REGISTERS = tuple(name for name in CALLEE_SAVED if name != "rsp")


#: Resumes whose registers `callee_saved` compares at a time.
_RESUME_BLOCK = 1 << 18


def callee_saved(facts: TraceFacts) -> Findings:
    """Registers at every resume of a call against their values before it.

    A resume is the ret that pops the call's own slot, or any transfer that
    lands on the call's return address with the call's rsp (`transfers.RESUME`):
    a re-pushed copy, `jmp *%r8`, longjmp. A call resumed twice (setjmp) is
    checked twice; a call never resumed is counted in a note.
    """
    r = facts.returns
    t = facts.transfers
    matched = np.flatnonzero(r.origin == Origin.CALL)
    resumes = np.flatnonzero(t.landing == Landing.RESUME)
    transfer_steps = np.concatenate([r.step[matched], t.step[resumes]])
    call_steps = np.concatenate(
        [facts.writes.step[r.writer[matched]], facts.calls[t.call[resumes]]]
    )
    order = np.argsort(transfer_steps, kind="stable")
    transfer_steps, call_steps = transfer_steps[order], call_steps[order]
    call_index = np.searchsorted(facts.calls, call_steps)

    m = call_steps.size
    # `_RESUME_BLOCK` resumes at a time (they are in step order, so a block reads the
    # row groups of its part of the trace), so that a long trace never holds a column
    # of values for every resume; only where one changed. The six registers of a block
    # are read together (about 25 MB): one read of each row group, not six.
    # Registers after the resume: the next row of the resumed thread (events.ThreadRuns).
    after_steps = facts.threads.next_rows(transfer_steps)
    changed = np.zeros((len(SAVED_REGISTERS), m), dtype=np.bool_)
    for lo in range(0, m, _RESUME_BLOCK):
        hi = min(lo + _RESUME_BLOCK, m)
        steps = np.concatenate([call_steps[lo:hi], after_steps[lo:hi]])
        by_step = np.argsort(steps, kind="stable")
        block = facts.registers_at(SAVED_REGISTERS, steps[by_step])
        for j, name in enumerate(SAVED_REGISTERS):
            values = np.empty(steps.shape, dtype=np.uint64)
            values[by_step] = block.pop(name)
            changed[j, lo:hi] = values[: hi - lo] != values[hi - lo :]
            del values
        del steps, by_step, block
    bad = np.flatnonzero(changed.any(axis=0))
    changed = changed[:, bad]
    read = facts.registers_at(SAVED_REGISTERS, np.concatenate([call_steps[bad], after_steps[bad]]))
    before = np.stack([read[name][: bad.size] for name in SAVED_REGISTERS])
    after = np.stack([read[name][bad.size :] for name in SAVED_REGISTERS])
    before = before.reshape(len(SAVED_REGISTERS), bad.size)
    after = after.reshape(len(SAVED_REGISTERS), bad.size)

    items = Items()
    rips = facts.rips_at(transfer_steps[bad])
    messages: list[Callable[[], str]] = []
    roots = _nested_roots(bad, call_steps, transfer_steps, changed, after)
    for k, b in enumerate(bad.tolist()):
        names = tuple(name for j, name in enumerate(SAVED_REGISTERS) if changed[j, k])
        kind = "clobbered " + " ".join(names)
        items.add(int(transfer_steps[b]), kind, int(rips[k]), int(roots[k]))
        messages.append(
            _clobbered_message(
                facts,
                int(call_steps[b]),
                int(transfer_steps[b]),
                int(call_index[b]),
                [
                    (n, int(before[j, k]), int(after[j, k]))
                    for j, n in enumerate(SAVED_REGISTERS)
                    if changed[j, k]
                ],
            )
        )
    resumed = np.zeros(facts.calls.size, dtype=np.bool_)
    resumed[call_index] = True
    never = int(facts.calls.size) - int(np.count_nonzero(resumed))
    notes = []
    if never:
        notes.append(f"{never} call{'s' if never != 1 else ''} never returned: not checked")
    older = int(np.count_nonzero(r.origin == Origin.BEFORE))
    if older:
        frames = "s to frames" if older != 1 else " to a frame"
        notes.append(f"{older} ret{frames} entered before the trace began: not checked")
    return grouped(facts, "callee-saved", items, lambda i: messages[i](), notes)


#: How many earlier bad resumes to look through for the one a resume follows from.
_NESTED_LOOKBACK = 16


def _nested_roots(
    bad: I64,
    call_steps: I64,
    back_steps: I64,
    changed: npt.NDArray[np.bool_],
    after: npt.NDArray[np.uint64],
) -> list[int]:
    """For each bad resume (in step order), the item it follows from, or -1.
    `changed` and `after` have a column per bad resume (`bad[k]`'s is column k).

    A call that resumes with a register changed only because a call nested in it
    resumed with that same register changed to the same value (yield returning
    after its switch lost rbx) is a consequence of that inner one's cause.
    """
    roots: list[int] = []
    for k, b in enumerate(bad.tolist()):
        root = -1
        for j in range(k - 1, max(k - 1 - _NESTED_LOOKBACK, -1), -1):
            a = int(bad[j])
            nested = call_steps[a] > call_steps[b] and back_steps[a] < back_steps[b]
            if (
                nested
                and np.array_equal(changed[:, j], changed[:, k])
                and np.array_equal(after[changed[:, k], j], after[changed[:, k], k])
            ):
                root = roots[j] if roots[j] >= 0 else j
                break
        roots.append(root)
    return roots


def _clobbered_message(
    facts: TraceFacts,
    call_step: int,
    back_step: int,
    call: int,
    changes: list[tuple[str, int, int]],
) -> Callable[[], str]:
    def text() -> str:
        callee = facts.symbolize(int(facts.call_targets[call]))
        names = [name for name, _, _ in changes]
        values_text = ", ".join(f"{n} {was:#x} before, {now:#x} after" for n, was, now in changes)
        regs = " and ".join(names)
        # Did the call come back through a context switch (rsp visiting another stack)?
        # Rows of the call's own thread only: another thread's stack is no switch.
        stacks_between = facts.rsp_owner[facts.threads.same_thread(call_step, back_step)]
        switched = bool(np.any(stacks_between != stacks_between[0]))
        through = " through a stack switch" if switched else ""
        found = saves_and_restores(facts, call_step, back_step, switched)
        leaving = "before the switch resumed it" if switched else "before the ret"
        told, untold = advices(facts, names, found, leaving)
        if untold:
            them = " and ".join(untold)
            it = "them" if len(untold) > 1 else "it"
            if switched:
                told.append(
                    f"the switch must save {them} in the context it leaves "
                    f"and restore {it} from the one it resumes"
                )
            else:
                told.append(
                    f"{callee} must save {them} (push on entry) and restore {it} (pop before ret)"
                )
        fix = "; ".join(told)
        return (
            f"{regs} changed across the call to {callee} at step {call_step}, returned "
            f"here{through} ({values_text}): {regs} {'are' if len(names) > 1 else 'is'} "
            f"callee-saved; {fix}"
        )

    return text


# --- stop ---------------------------------------------------------------------

#: Stop reasons that end a run badly: they fail `stop` unless [expect] stop names them.
BAD_STOPS = ("fault", "max_steps", "unsupported", "deadlock")


def stop(facts: TraceFacts) -> Findings:
    meta = facts.meta
    reason = meta.stop.reason
    if reason not in BAD_STOPS or meta.scenario.expect.stop == reason:
        return Findings()
    step = min(meta.stop.step, max(facts.steps - 1, 0))
    info = facts.describe([step]).get(step)
    where = f" in {info.symbol}" if info else ""
    src = facts.source(info.rip) if info else None
    where += f" ({src})" if src else ""
    if reason == "fault":
        what = f"the run faulted at step {meta.stop.step}{where}: {meta.stop.detail}"
    elif reason == "deadlock":
        what = f"the run deadlocked at step {meta.stop.step}{where}: {meta.stop.detail}"
    elif reason == "unsupported":
        what = (
            f"the run stopped at step {meta.stop.step}{where} on what the machine cannot "
            f"run faithfully: {meta.stop.detail}"
        )
    else:
        what = (
            f"the run hit max_steps at step {meta.stop.step}{where} ({meta.stop.detail}) "
            "instead of ending"
        )
    what += f'; if that is what the scenario shows, say so with [expect] stop = "{reason}"'
    return simple(facts, "stop", [(step, reason, what)])


# --- expect --------------------------------------------------------------------


def expect(facts: TraceFacts) -> Findings:
    meta = facts.meta
    wanted = meta.scenario.expect
    last = max(facts.steps - 1, 0)
    found: list[tuple[int, str, str]] = []
    if wanted.stdout is not None and meta.stdout != wanted.stdout:
        found.append(
            (
                last,
                "stdout",
                f"the program wrote {_short(meta.stdout)} to stdout; the scenario expects "
                f"{_short(wanted.stdout)}",
            )
        )
    if wanted.stop is not None and meta.stop.reason != wanted.stop:
        found.append(
            (
                min(meta.stop.step, last),
                "stop",
                f"the run stopped: {meta.stop.reason} ({meta.stop.detail}); the scenario "
                f"expects stop reason {wanted.stop}",
            )
        )
    planted = facts.planted_returns
    for ret in wanted.rets:
        if any(
            p.region == ret.stack and p.index == ret.index and p.target == ret.target
            for p in planted
        ):
            continue
        same_stack = [p for p in planted if p.region == ret.stack]
        if same_stack:
            seen = ", ".join(
                f"index {p.index} -> {p.target} (step {p.ret_step})" for p in same_stack[:5]
            )
            found.append(
                (
                    same_stack[0].ret_step,
                    "ret",
                    f"expected a ret to pop {ret.target} planted at index {ret.index} of "
                    f"{ret.stack}; the planted returns from {ret.stack} are: {seen}",
                )
            )
        else:
            found.append(
                (
                    last,
                    "ret",
                    f"expected a ret to pop {ret.target} planted at index {ret.index} of "
                    f"{ret.stack}; no ret popped a planted address from {ret.stack}",
                )
            )
    return simple(facts, "expect", found)


def _short(text: str, limit: int = 80) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


INVARIANTS: tuple[Invariant, ...] = (
    Invariant(
        "alignment",
        "rsp % 16 == 0 before every call, rsp % 16 == 8 where a switch enters a function",
        alignment,
    ),
    Invariant(
        "ret-source",
        "every ret pops what its call pushed or a planted code address",
        ret_source,
    ),
    Invariant(
        "stack-bounds",
        "rsp stays within a stack (base <= rsp <= top); writes land in declared regions",
        stack_bounds,
    ),
    Invariant(
        "callee-saved",
        "rbx, rbp, r12-r15 are the same where a call resumes as before the call",
        callee_saved,
    ),
    Invariant(
        "stop",
        "the run does not fault or hit max_steps, unless [expect] stop says it does",
        stop,
    ),
    Invariant(
        "expect",
        "the scenario's [expect]: stdout, stop reason, planted returns",
        expect,
    ),
)
