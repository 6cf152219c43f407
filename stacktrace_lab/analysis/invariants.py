"""The invariants: each a pure function from a trace's facts to its violations.

Every function here has the same shape, `(TraceFacts) -> Findings`: it reads
the events of the shared pass (`events.derive_facts`), finds the steps where
its rule breaks with numpy, and only then builds at most `MAX_VIOLATIONS`
`Violation`s, each naming the step, rip, symbol and the mistake in the
program's terms. `INVARIANTS` is the one registry; `check.check` runs it.
The definitions are those of docs/DESIGN ("The invariants").

- `alignment`: rsp % 16 == 0 before every call; rsp % 16 == 8 where a planted
  ret lands (a call's landing follows from its own rule, so it is reported
  once, at the call); a landing site that is itself a `ret` (a trampoline)
  has no rule of its own: its `ret` is classified in turn.
- `ret-source`: every ret pops what its call pushed, a planted address that
  points into the code, or the sentinel under the entry function.
- `stack-bounds`: base <= rsp <= top of some stack; every write inside a
  declared stack or data region; below a stack's base is an overflow.
- `callee-saved`: rbx, rbp, r12-r15 and rsp equal after a return to what they
  were before its call, the call matched by the return-address slot, so a
  return through a context switch is matched too.
- `expect`: the scenario's [expect]: stdout, stop reason, and each
  [[expect.ret]] one of the planted returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..arch import CALLEE_SAVED, STACK_ALIGNMENT
from ..layout import Region
from .events import I64, U64, B, Kind, Origin, TraceFacts, stack_index
from .model import MAX_VIOLATIONS, Findings, Violation

Check = Callable[[TraceFacts], Findings]


@dataclass(frozen=True)
class Invariant:
    id: str
    summary: str
    check: Check


def _findings(
    facts: TraceFacts, invariant: str, found: Iterable[tuple[int, str]], total: int | None = None
) -> Findings:
    """Violations from (step, message) pairs, sorted by step, capped, with rip and symbol."""
    items = sorted(found, key=lambda item: item[0])
    count = len(items) if total is None else total
    items = items[:MAX_VIOLATIONS]
    info = facts.describe(step for step, _ in items)
    violations = []
    for step, message in items:
        where = info.get(step)
        violations.append(
            Violation(
                invariant=invariant,
                step=step,
                rip=where.rip if where else 0,
                symbol=where.symbol if where else "",
                message=message,
            )
        )
    return Findings(tuple(violations), count)


def _first(indices: I64) -> I64:
    return indices[:MAX_VIOLATIONS]


# --- alignment ---------------------------------------------------------------


def alignment(facts: TraceFacts) -> Findings:
    found: list[tuple[int, str]] = []

    calls = facts.calls
    misaligned_calls = np.flatnonzero(facts.rsp[calls] % STACK_ALIGNMENT != 0)
    for i in _first(misaligned_calls).tolist():
        step, rsp = int(calls[i]), int(facts.rsp[calls[i]])
        callee = facts.symbolize(int(facts.call_targets[i]))
        off = rsp % STACK_ALIGNMENT
        found.append(
            (
                step,
                f"call to {callee} with rsp % 16 == {off} (rsp={rsp:#x}): {callee} will be "
                f"entered with rsp % 16 == {(rsp - 8) % 16} instead of 8; the caller's frame "
                f"is {off} bytes off the 16-byte grid, so adjust it before the call",
            )
        )

    returns = facts.returns
    planted = facts.planted_steps
    landing = returns.step[planted] + 1
    # A trampoline (a landing site that is itself a `ret`) has no requirement of
    # its own: its own ret is a planted return too, checked where it lands.
    trampoline = facts.kind_at(landing) == Kind.RET
    misaligned = np.flatnonzero(
        ~trampoline & (returns.entry_rsp[planted] % STACK_ALIGNMENT != STACK_ALIGNMENT // 2)
    )
    for k in _first(misaligned).tolist():
        i = int(planted[k])
        found.append(_misaligned_entry(facts, i))
    total = len(misaligned_calls) + len(misaligned)
    return _findings(facts, "alignment", found, total)


def _misaligned_entry(facts: TraceFacts, i: int) -> tuple[int, str]:
    r = facts.returns
    ret_step, slot, rsp = int(r.step[i]), int(r.slot[i]), int(r.entry_rsp[i])
    target = facts.symbolize(int(r.value[i]))
    step = ret_step + 1 if ret_step + 1 < facts.steps else ret_step
    off = slot % STACK_ALIGNMENT
    head = f"{target} entered with rsp % 16 == {rsp % 16} (rsp={rsp:#x}): "
    located = facts.locate(slot)
    if located is None:
        return step, head + (
            f"the planted return address sits at {slot:#x}, {off} bytes off the 16-byte grid"
        )
    region, index = located
    advice = ""
    suggestion = _aligned_index(region, index)
    if suggestion is not None:
        advice = f"; plant it at index {suggestion} (= size - {region.size - suggestion})"
    return step, head + (
        f"the planted return address sits at index {index} of {region.name}, "
        f"{off} bytes off the 16-byte grid{advice}"
    )


def _aligned_index(region: Region, index: int) -> int | None:
    """The nearest index of `region` whose slot is 16-byte aligned (below first)."""
    off = (region.base + index) % STACK_ALIGNMENT
    for candidate in (index - off, index + STACK_ALIGNMENT - off):
        if 0 <= candidate <= region.size - 8:
            return candidate
    return None


# --- ret-source --------------------------------------------------------------


def ret_source(facts: TraceFacts) -> Findings:
    r = facts.returns
    unwritten = np.flatnonzero(r.origin == Origin.UNWRITTEN)
    found: list[tuple[int, str]] = []
    for i in _first(unwritten).tolist():
        value, slot = int(r.value[i]), int(r.slot[i])
        found.append(
            (
                int(r.step[i]),
                f"ret pops {value:#x} from {facts.where(slot)}, a slot nothing in the program "
                "wrote: no call pushed a return address there and no store planted one",
            )
        )
    planted = facts.planted_steps
    code = [reg for reg in facts.meta.regions if reg.kind == "code"]
    values = r.value[planted]
    if code:
        in_code = (values >= np.uint64(code[0].base)) & (values < np.uint64(code[0].top))
    else:
        in_code = np.zeros(values.shape, dtype=np.bool_)
    not_code = planted[~in_code & (values != np.uint64(facts.sentinel))]
    stores = facts.describe(facts.writes.step[r.writer[_first(not_code)]].tolist())
    for i in _first(not_code).tolist():
        value, slot = int(r.value[i]), int(r.slot[i])
        store = stores[int(facts.writes.step[r.writer[i]])]
        found.append(
            (
                int(r.step[i]),
                f"ret pops {facts.describe_value(value)} from {facts.where(slot)}, planted at "
                f"step {store.step} by `{store.insn}`, but that is not an address in the code: "
                "the store planted data where a return address belongs",
            )
        )
    return _findings(facts, "ret-source", found, len(unwritten) + len(not_code))


# --- stack-bounds ------------------------------------------------------------


def stack_bounds(facts: TraceFacts) -> Findings:
    writes = facts.writes
    w_end = writes.addr + writes.size.astype(np.uint64)
    inside = np.zeros(len(writes), dtype=np.bool_)
    for region in facts.meta.regions:
        if region.kind == "code":
            continue
        inside |= (writes.addr >= np.uint64(region.base)) & (w_end <= np.uint64(region.top))
    stray = np.flatnonzero(~inside)
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

    found: list[tuple[int, str]] = []
    for k, stack in enumerate(facts.stacks):
        hit = np.flatnonzero(above == k)
        if not hit.size:
            continue
        found.append(_overflow(stack, hit, addrs, steps, is_write))
    overflows = len(found)
    others = np.flatnonzero((above < 0) & first_of_run)
    for i in _first(others).tolist():
        addr = int(addrs[i])
        if is_write[i]:
            size = int(writes.size[stray[i]])
            what = f"writes {size} bytes at {addr:#x}, {_outside(facts, addr)}"
        else:
            what = f"moves rsp to {addr:#x}, outside every stack ({_outside(facts, addr)})"
        found.append((int(steps[i]), what))
    return _findings(facts, "stack-bounds", found, overflows + len(others))


def _overflow(stack: Region, hit: I64, addrs: U64, steps: I64, is_write: B) -> tuple[int, str]:
    """One finding per overflowed stack: where it starts, how far writes and rsp go."""
    depth = np.int64(stack.base) - addrs[hit].astype(np.int64)
    order = np.lexsort((~is_write[hit], steps[hit]))  # by step; a write before rsp
    first = int(hit[order[0]])
    max_depth = int(depth.max())
    name = stack.name
    parts = [
        f"{name} ({stack.size} bytes) overflows by {max_depth} bytes: here "
        f"{_access(stack, first, addrs, is_write)}, {int(depth[order[0]])} bytes below its base"
    ]
    for kind, mask in (("write", is_write[hit]), ("rsp", ~is_write[hit])):
        if not mask.any():
            continue
        deepest = np.lexsort((steps[hit][mask], -depth[mask]))[0]
        where = f"{name}-{int(depth[mask][deepest])}"
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
    where = f"{stack.name}-{stack.base - addr} ({addr:#x})"
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


def callee_saved(facts: TraceFacts) -> Findings:
    r = facts.returns
    matched = np.flatnonzero(r.origin == Origin.CALL)
    ret_steps = r.step[matched]
    call_steps = facts.writes.step[r.writer[matched]]
    # Read in one pass; keep, per register, only the values where it changed.
    query = np.concatenate([call_steps, ret_steps + 1])
    m = call_steps.size
    read = facts.registers_at(SAVED_REGISTERS, query)
    changed: dict[str, B] = {}
    values: dict[str, tuple[U64, U64]] = {}
    for name in CALLEE_SAVED:
        if name == "rsp":
            before, after = facts.rsp[call_steps], r.entry_rsp[matched]
        else:
            both = read.pop(name)
            before, after = both[:m], both[m:]
        changed[name] = before != after
        values[name] = (before[changed[name]], after[changed[name]])
        del before, after
    any_changed = np.zeros(matched.shape, dtype=np.bool_)
    for mask in changed.values():
        any_changed |= mask
    bad = np.flatnonzero(any_changed)
    found: list[tuple[int, str]] = []
    call_index = np.searchsorted(facts.calls, call_steps)
    for k in _first(bad).tolist():
        call_step, ret_step = int(call_steps[k]), int(ret_steps[k])
        callee = facts.symbolize(int(facts.call_targets[call_index[k]]))
        names = [name for name in CALLEE_SAVED if changed[name][k]]
        shown = []
        for name in names:
            rank = int(np.count_nonzero(changed[name][:k]))  # k's place among the changed
            was, now = values[name][0][rank], values[name][1][rank]
            shown.append(f"{name} {int(was):#x} before, {int(now):#x} after")
        values_text = ", ".join(shown)
        regs = " and ".join(names)
        # Did the return come back through a context switch (rsp visiting another stack)?
        stacks_between = facts.rsp_stack[call_step : ret_step + 1]
        switched = bool(np.any(stacks_between != stacks_between[0]))
        through = " through a stack switch" if switched else ""
        it = "them" if len(names) > 1 else "it"
        if switched:
            fix = (
                f"the switch must save {regs} in the context it leaves "
                f"and restore {it} from the one it resumes"
            )
        else:
            fix = f"{callee} must save {regs} (push on entry) and restore {it} (pop before ret)"
        found.append(
            (
                ret_step,
                f"{regs} changed across the call to {callee} at step {call_step}, returned "
                f"here{through} ({values_text}): {regs} {'are' if len(names) > 1 else 'is'} "
                f"callee-saved; {fix}",
            )
        )
    return _findings(facts, "callee-saved", found, len(bad))


# --- expect --------------------------------------------------------------------


def expect(facts: TraceFacts) -> Findings:
    meta = facts.meta
    wanted = meta.scenario.expect
    last = max(facts.steps - 1, 0)
    found: list[tuple[int, str]] = []
    if wanted.stdout is not None and meta.stdout != wanted.stdout:
        found.append(
            (
                last,
                f"the program wrote {_short(meta.stdout)} to stdout; the scenario expects "
                f"{_short(wanted.stdout)}",
            )
        )
    if wanted.stop is not None and meta.stop.reason != wanted.stop:
        found.append(
            (
                min(meta.stop.step, last),
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
                    f"expected a ret to pop {ret.target} planted at index {ret.index} of "
                    f"{ret.stack}; the planted returns from {ret.stack} are: {seen}",
                )
            )
        else:
            found.append(
                (
                    last,
                    f"expected a ret to pop {ret.target} planted at index {ret.index} of "
                    f"{ret.stack}; no ret popped a planted address from {ret.stack}",
                )
            )
    return _findings(facts, "expect", found)


def _short(text: str, limit: int = 80) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


INVARIANTS: tuple[Invariant, ...] = (
    Invariant(
        "alignment",
        "rsp % 16 == 0 before every call, rsp % 16 == 8 where a planted ret lands",
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
        "rbx, rbp, r12-r15 and rsp are the same after a return as before its call",
        callee_saved,
    ),
    Invariant(
        "expect",
        "the scenario's [expect]: stdout, stop reason, planted returns",
        expect,
    ),
)
