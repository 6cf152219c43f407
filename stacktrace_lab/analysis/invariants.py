"""The invariants: each a pure function from a trace's facts to its findings.

Every function here has the same shape, `(TraceFacts) -> Findings`: it reads
the events of the shared pass (`events.derive_facts`, and the classified
landings of `transfers.classify`), finds the steps where its rule breaks with
numpy, and hands them to `_grouped` as `Items`: per violation its step, its
kind of mistake, its code site and, when it follows from another violation,
that one (its root). `_grouped` turns them into causes (one per invariant,
site and kind, with a count and the first and last step), consequences listed
under their cause, and at most `MAX_VIOLATIONS` violations, each with its
message and source line. `INVARIANTS` is the one registry; `check.check` runs
it. The rules are stated in docs/invariants.md.

- `alignment`: rsp % 16 == 0 before every call; rsp % 16 == 8 where a
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

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..arch import CALLEE_SAVED, STACK_ALIGNMENT
from ..layout import Region
from .events import I64, U64, B, Origin, TraceFacts, stack_index
from .model import MAX_VIOLATIONS, Cause, Consequence, Findings, Violation
from .transfers import Landing, realigns

Check = Callable[[TraceFacts], Findings]
#: At most this many causes are described per invariant (all are counted).
MAX_CAUSES = 100


@dataclass(frozen=True)
class Invariant:
    id: str
    summary: str
    check: Check


@dataclass
class Items:
    """The violations an invariant found, before they are grouped and described."""

    step: list[int] = field(default_factory=list)
    #: The kind of mistake, one of the invariant's kind names.
    kind: list[str] = field(default_factory=list)
    #: The code address the mistake is at (grouping key with the kind).
    site: list[int] = field(default_factory=list)
    #: The index of the item this one follows from (a consequence), or -1.
    root: list[int] = field(default_factory=list)

    def add(self, step: int, kind: str, site: int, root: int = -1) -> int:
        self.step.append(step)
        self.kind.append(kind)
        self.site.append(site)
        self.root.append(root)
        return len(self.step) - 1


def _grouped(
    facts: TraceFacts,
    invariant: str,
    items: Items,
    message: Callable[[int], str],
    notes: Sequence[str] = (),
) -> Findings:
    """Causes, consequences and the first violations from `items`; `message(i)` says
    what is wrong at item `i` (asked only for the items shown)."""
    count = len(items.step)
    if not count:
        return Findings(notes=tuple(notes))
    order = sorted(range(count), key=lambda i: (items.step[i], i))
    groups: dict[tuple[str, int], list[int]] = {}
    following: dict[tuple[tuple[str, int], str], list[int]] = {}
    for i in order:
        root = items.root[i]
        if root < 0:
            groups.setdefault((items.kind[i], items.site[i]), []).append(i)
        else:
            key = (items.kind[root], items.site[root])
            following.setdefault((key, items.kind[i]), []).append(i)
    shown = order[:MAX_VIOLATIONS]
    causes_shown = list(groups.items())[:MAX_CAUSES]
    described = set(shown) | {members[0] for _, members in causes_shown}
    described |= {members[0] for members in following.values()}
    info = facts.describe(items.step[i] for i in described)
    violations: dict[int, Violation] = {}
    for i in sorted(described):
        where = info.get(items.step[i])
        violations[i] = Violation(
            invariant=invariant,
            step=items.step[i],
            rip=where.rip if where else 0,
            symbol=where.symbol if where else "",
            message=message(i),
            source=facts.source(where.rip) if where else None,
        )
    causes = []
    for (kind, site), members in causes_shown:
        consequences = tuple(
            Consequence(
                invariant=invariant,
                kind=sub_kind,
                count=len(subs),
                first_step=items.step[subs[0]],
                last_step=items.step[subs[-1]],
                example=violations[subs[0]],
            )
            for (key, sub_kind), subs in following.items()
            if key == (kind, site)
        )
        causes.append(
            Cause(
                invariant=invariant,
                kind=kind,
                site=site,
                site_symbol=facts.symbolize(site),
                site_source=facts.source(site),
                count=len(members),
                first_step=items.step[members[0]],
                last_step=items.step[members[-1]],
                first=violations[members[0]],
                consequences=consequences,
            )
        )
    return Findings(
        violations=tuple(violations[i] for i in shown),
        total=count,
        causes=tuple(causes),
        notes=tuple(notes),
    )


def _simple(facts: TraceFacts, invariant: str, found: Sequence[tuple[int, str, str]]) -> Findings:
    """Findings from (step, kind, message) triples; the site is the instruction at the step."""
    items = Items()
    rips = facts.rips_at(np.array([step for step, _, _ in found], dtype=np.int64))
    for (step, kind, _), rip in zip(found, rips.tolist(), strict=True):
        items.add(step, kind, int(rip))
    return _grouped(facts, invariant, items, lambda i: found[i][2])


def _first(indices: I64) -> I64:
    return indices[:MAX_VIOLATIONS]


# --- alignment ---------------------------------------------------------------


def alignment(facts: TraceFacts) -> Findings:
    items = Items()
    messages: dict[int, Callable[[], str]] = {}
    notes: list[str] = []
    t = facts.transfers
    rsp_ok = t.rsp % STACK_ALIGNMENT == STACK_ALIGNMENT // 2
    entries = np.flatnonzero((t.landing == Landing.ENTRY) & ~rsp_ok)
    entry_item: dict[int, int] = {}  # transfer index -> item
    transfer_rips = facts.rips_at(t.step)
    stores = _planting_stores(facts, t.step[entries])
    for k, i in enumerate(entries.tolist()):
        landing_step = min(int(t.step[i]) + 1, max(facts.steps - 1, 0))
        if realigns(facts, int(t.step[i]) + 1):
            notes.append(
                f"{facts.symbolize(int(t.target[i]))} is entered with rsp % 16 == "
                f"{int(t.rsp[i]) % 16} at step {int(t.step[i]) + 1}, but realigns rsp "
                "(and $-16, %rsp) before its first call: allowed"
            )
            continue
        store = int(stores[k])
        site, made = _entry_site(facts, i, store, int(transfer_rips[i]))
        item = items.add(landing_step, "misaligned-entry", site)
        entry_item[i] = item
        messages[item] = _entry_message(facts, i, store, made)

    calls = facts.calls
    call_rsp = facts.rsp[calls]
    misaligned = np.flatnonzero(call_rsp % STACK_ALIGNMENT != 0)
    if misaligned.size:
        call_rips = facts.rips_at(calls[misaligned])
        roots = _attribute_calls(facts, misaligned, entry_item)
        call_item: dict[int, int] = {}  # call index -> its item, for calls that are roots
        for k, c in enumerate(misaligned.tolist()):
            root, blame = roots[k]
            if root < -1:  # inside the callee of a misaligned call that is a root itself
                root = call_item[-2 - root]
            step = int(calls[c])
            if root >= 0:
                item = items.add(step, "misaligned-call", int(call_rips[k]), root)
            elif blame >= 0:
                item = items.add(step, "landing-misaligns-calls", int(transfer_rips[blame]))
                messages[item] = _blamed_call_message(facts, c, blame)
                call_item[c] = item
            else:
                site = facts.function_start(int(call_rips[k]))
                item = items.add(step, "misaligned-call", site)
                call_item[c] = item
            if item not in messages:
                messages[item] = _call_message(facts, c)
    return _grouped(facts, "alignment", items, lambda i: messages[i](), notes)


def _call_message(facts: TraceFacts, c: int) -> Callable[[], str]:
    def text() -> str:
        rsp = int(facts.rsp[facts.calls[c]])
        callee = facts.symbolize(int(facts.call_targets[c]))
        off = rsp % STACK_ALIGNMENT
        return (
            f"call to {callee} with rsp % 16 == {off} (rsp={rsp:#x}): {callee} will be "
            f"entered with rsp % 16 == {(rsp - 8) % 16} instead of 8; the caller's frame "
            f"is {off} bytes off the 16-byte grid, so adjust it before the call"
        )

    return text


def _blamed_call_message(facts: TraceFacts, c: int, blame: int) -> Callable[[], str]:
    def text() -> str:
        t = facts.transfers
        rsp = int(facts.rsp[facts.calls[c]])
        callee = facts.symbolize(int(facts.call_targets[c]))
        step = int(t.step[blame])
        what = "ret" if bool(t.is_ret[blame]) else "jmp"
        target = facts.symbolize(int(t.target[blame]))
        src = _at(facts, int(facts.rips_at(np.array([step]))[0]))
        return (
            f"call to {callee} with rsp % 16 == {rsp % 16} (rsp={rsp:#x}): rsp was set up by "
            f"the {what} at step {step}{src}, which landed on {target} with rsp % 16 == "
            f"{int(t.rsp[blame]) % 16}; that landing is not a function entry, a resume or a "
            "return, so its rsp must already be what the calls from there need"
        )

    return text


def _at(facts: TraceFacts, rip: int) -> str:
    """` in gt_switch (first-switch.toml:31)` for a code address."""
    src = facts.source(rip)
    return f" in {facts.symbolize(rip)}" + (f" ({src})" if src else "")


def _planting_stores(facts: TraceFacts, steps: I64) -> I64:
    """For each transfer step: the index into `writes` of the store that planted the
    address a `ret` popped (origin PLANTED), else -1."""
    r = facts.returns
    out = np.full(steps.shape, -1, dtype=np.int64)
    pos = np.searchsorted(r.step, steps)
    pos_c = np.clip(pos, 0, max(len(r) - 1, 0))
    if len(r):
        hit = (r.step[pos_c] == steps) & (r.origin[pos_c] == Origin.PLANTED)
        out[hit] = r.writer[pos_c[hit]]
    return out


#: `mov 0x8(%rsi), %rsp`: a stack pointer loaded from memory (a saved context).
_LOAD_RSP = re.compile(r"^mov[q]?\s+[^,]*\([^)]*\)\s*,\s*%rsp$")
#: How far before a switch's transfer to look for the load of its stack pointer.
_RSP_LOOKBACK = 64


def _entry_site(facts: TraceFacts, i: int, store: int, transfer_rip: int) -> tuple[int, int]:
    """Where a misaligned entry's mistake is, and the write that saved its stack pointer
    (-1 if not found). The store that planted the popped address, when another
    function made it (a spawn); else the store that saved the stack pointer the
    switch loaded (a make-context); else the planting store; else the transfer."""
    if store >= 0:
        store_rip = facts.writes_rip(store)
        if facts.function_start(store_rip) != facts.function_start(transfer_rip):
            return store_rip, -1
    made = _saved_rsp_write(facts, int(facts.transfers.step[i]))
    if made >= 0:
        return facts.writes_rip(made), made
    if store >= 0:
        return facts.writes_rip(store), -1
    return transfer_rip, -1


def _saved_rsp_write(facts: TraceFacts, step: int) -> int:
    """The write (index into `facts.writes`) that stored the stack pointer which the
    switch ending at `step` loaded into rsp (`mov X(%reg), %rsp`), or -1."""
    k = int(np.searchsorted(facts.calls, step)) - 1
    low = max(int(facts.calls[k]) if k >= 0 else 0, step - _RSP_LOOKBACK)
    rows = facts.trace.slice(low, step + 1, ["step", "insn", "reads"]).to_pydict()
    for row in range(len(rows["step"]) - 1, -1, -1):
        if not _LOAD_RSP.match(str(rows["insn"][row]).strip()) or not rows["reads"][row]:
            continue
        addr = int(rows["reads"][row][0]["addr"])
        load_step = int(rows["step"][row])
        w = facts.writes
        hits = np.flatnonzero((w.addr == np.uint64(addr)) & (w.step < load_step))
        return int(hits[-1]) if hits.size else -1
    return -1


def _entry_message(facts: TraceFacts, i: int, store: int, made: int) -> Callable[[], str]:
    def saved() -> str:
        if made < 0:
            return ""
        made_step = int(facts.writes.step[made])
        info = facts.describe([made_step])[made_step]
        return (
            f"; the stack pointer it starts on was saved at step {made_step} by "
            f"`{info.insn}`{_at(facts, info.rip)}"
        )

    def text() -> str:
        return body() + saved()

    def body() -> str:
        t = facts.transfers
        step, rsp = int(t.step[i]), int(t.rsp[i])
        target = facts.symbolize(int(t.target[i]))
        transfer_rip = int(facts.rips_at(np.array([step]))[0])
        first = ""
        if bool(t.first_code[i]):
            owner = facts.stack_name_at(step + 1)
            first = f", the first code to run on {owner}" if owner else ""
        head = (
            f"{target} entered with rsp % 16 == {rsp % 16} (rsp={rsp:#x}){first}, where a call "
            f"would have left 8"
        )
        if not bool(t.is_ret[i]) or store < 0:
            return head + (
                f": the jmp{_at(facts, transfer_rip)} lands on it with rsp % 16 == {rsp % 16}; "
                "push a return address (or realign) before jumping to it"
                if not bool(t.is_ret[i])
                else f": the ret{_at(facts, transfer_rip)} pops its address"
            )
        slot = rsp - 8
        store_step = int(facts.writes.step[store])
        info = facts.describe([store_step])[store_step]
        located = facts.locate(slot)
        off = slot % STACK_ALIGNMENT
        if located is None:
            where = f"at {slot:#x}"
            advice = ""
        else:
            region, index = located
            where = f"at index {index} of {region.name}"
            advice = _advice(facts, region, index, step)
        return head + (
            f": the ret{_at(facts, transfer_rip)} pops the address planted {where} at step "
            f"{store_step} by `{info.insn}`{_at(facts, info.rip)}, {off} bytes off the "
            f"16-byte grid{advice}"
        )

    return text


def _advice(facts: TraceFacts, region: Region, index: int, ret_step: int) -> str:
    """Where to plant the address instead: the nearest 16-byte aligned slot (below first)
    that does not hold another planted return address. If the slot above the
    suggestion holds one (the function's own return address, `guard`), a
    trampoline (a lone `ret`) goes between them."""
    taken = {p.index: p.target for p in facts.planted_returns if p.region == region.name}
    off = (region.base + index) % STACK_ALIGNMENT
    for candidate in (index - off, index + STACK_ALIGNMENT - off):
        if not 0 <= candidate <= region.size - 8 or candidate == index:
            continue
        if candidate in taken and candidate != index:
            continue
        advice = f"; plant it at index {candidate} (= size - {region.size - candidate})"
        above = candidate + 8
        if above == index or above in taken:
            keep = (
                f", so {taken[above + 8]} stays at index {above + 8}" if above + 8 in taken else ""
            )
            advice += (
                f", with rsp pointing at it; its return address is then read from index {above}: "
                f"plant a trampoline there (a lone `ret`, like the tutorial's skip){keep}"
            )
        return advice
    return ""


def _attribute_calls(
    facts: TraceFacts, misaligned: I64, entry_item: dict[int, int]
) -> list[tuple[int, int]]:
    """For each misaligned call (an index into `facts.calls`): (root item, blamed transfer).

    A shadow stack of frames per stack region, walked in step order up to the
    last misaligned call: a misaligned call inside a frame entered misaligned
    follows from that frame's root (an ENTRY landing, or the misaligned call
    that entered it); inside a frame set up by an OTHER landing it is blamed on
    that landing; else it is a mistake of its own (root -1, blame -1). A call
    that is its own root gets its item later: its callees point at it by
    `-2 - call index`, resolved at the end.
    """
    calls, rsp = facts.calls, facts.rsp
    t = facts.transfers
    last = int(calls[misaligned[-1]])
    owner_of = facts.rsp_owner
    n = facts.steps

    # Events: 0 = ret (pops), 1 = landing of a classified transfer, 2 = call.
    r = facts.returns
    ret_steps = r.step[r.step <= last]
    landings = np.flatnonzero(t.step < last)
    call_upto = np.flatnonzero(calls <= last)
    ev_step = np.concatenate([ret_steps, t.step[landings] + 1, calls[call_upto]])
    ev_kind = np.concatenate(
        [
            np.zeros(ret_steps.size, dtype=np.int8),
            np.ones(landings.size, dtype=np.int8),
            np.full(call_upto.size, 2, dtype=np.int8),
        ]
    )
    ev_index = np.concatenate([np.arange(ret_steps.size), landings, call_upto])
    # A ret pops before its own landing; a landing happens before a call at the same step.
    order = np.lexsort((ev_kind, ev_step))
    is_misaligned = np.zeros(calls.size, dtype=np.bool_)
    is_misaligned[misaligned] = True
    position = {int(c): k for k, c in enumerate(misaligned.tolist())}

    # frame: [entry rsp, root (item >= 0, or -2 - call index), blamed transfer or -1]
    frames: dict[int, list[list[int]]] = {}
    if n:
        frames[int(owner_of[0])] = [[int(rsp[0]), -1, -1]]
    result: list[tuple[int, int]] = [(-1, -1)] * misaligned.size
    own_root: dict[int, int] = {}  # call index -> k in `misaligned` for calls that are roots

    def stack_at(step: int) -> list[list[int]]:
        k = int(owner_of[step]) if step < n else int(facts.final_owner)
        return frames.setdefault(k, [])

    for e in order.tolist():
        kind, step, idx = int(ev_kind[e]), int(ev_step[e]), int(ev_index[e])
        if kind == 0:
            slot = int(rsp[step])
            frame_list = stack_at(step)
            while frame_list and frame_list[-1][0] <= slot:
                frame_list.pop()
        elif kind == 1:
            entry_rsp = int(t.rsp[idx])
            frame_list = stack_at(min(step, n))
            while frame_list and frame_list[-1][0] < entry_rsp:
                frame_list.pop()
            landing = int(t.landing[idx])
            if landing == Landing.ENTRY:
                frame_list.append([entry_rsp, entry_item.get(idx, -1), -1])
            elif landing == Landing.OTHER:
                frame_list.append([entry_rsp, -1, idx])
        else:
            call_rsp = int(rsp[step])
            frame_list = stack_at(step)
            while frame_list and frame_list[-1][0] < call_rsp:
                frame_list.pop()
            top = frame_list[-1] if frame_list else [0, -1, -1]
            root = -1
            if is_misaligned[idx]:
                k = position[idx]
                if top[1] != -1:
                    result[k] = (top[1], -1)
                    root = top[1]
                elif top[2] >= 0:
                    result[k] = (-1, top[2])
                    own_root[idx] = k
                    root = -2 - idx
                else:
                    own_root[idx] = k
                    root = -2 - idx
            frame_list.append([call_rsp - 8, root, -1])
    return result


# --- ret-source --------------------------------------------------------------


def ret_source(facts: TraceFacts) -> Findings:
    r = facts.returns
    unwritten = np.flatnonzero(r.origin == Origin.UNWRITTEN)
    items = Items()
    messages: list[Callable[[], str]] = []
    ret_rips = facts.rips_at(r.step[unwritten])
    for k, i in enumerate(unwritten.tolist()):
        # The mistake is where the stack pointer the switch loaded was saved, if found.
        made = _saved_rsp_write(facts, int(r.step[i])) if k < MAX_CAUSES else -1
        site = facts.writes_rip(made) if made >= 0 else int(ret_rips[k])
        items.add(int(r.step[i]), "unwritten-slot", site)
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
        items.add(int(r.step[i]), "planted-data", int(store_rips[k]))
        messages.append(_planted_data_message(facts, i))
    return _grouped(facts, "ret-source", items, lambda i: messages[i]())


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
                f"`{info.insn}`{_at(facts, info.rip)}"
            )
        return (
            f"ret pops {value:#x} from {facts.where(slot)}, a slot nothing in the program "
            f"wrote: no call pushed a return address there and no store planted one{saved}"
        )

    return text


def _planted_data_message(facts: TraceFacts, i: int) -> Callable[[], str]:
    def text() -> str:
        r = facts.returns
        value, slot = int(r.value[i]), int(r.slot[i])
        store_step = int(facts.writes.step[r.writer[i]])
        store = facts.describe([store_step])[store_step]
        return (
            f"ret pops {facts.describe_value(value)} from {facts.where(slot)}, planted at "
            f"step {store.step} by `{store.insn}`{_at(facts, store.rip)}, but that is not an "
            "address in the code: the store planted data where a return address belongs"
        )

    return text


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

    found: list[tuple[int, str, str]] = []
    for k, stack in enumerate(facts.stacks):
        hit = np.flatnonzero(above == k)
        if not hit.size:
            continue
        step, what = _overflow(stack, hit, addrs, steps, is_write)
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
    return _simple(facts, "stack-bounds", found)


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
    read = facts.registers_at(SAVED_REGISTERS, np.concatenate([call_steps, transfer_steps + 1]))
    changed = np.zeros((len(SAVED_REGISTERS), m), dtype=np.bool_)
    before = np.zeros((len(SAVED_REGISTERS), m), dtype=np.uint64)
    after = np.zeros((len(SAVED_REGISTERS), m), dtype=np.uint64)
    for j, name in enumerate(SAVED_REGISTERS):
        both = read.pop(name)
        before[j], after[j] = both[:m], both[m:]
        changed[j] = before[j] != after[j]
    bad = np.flatnonzero(changed.any(axis=0))

    items = Items()
    rips = facts.rips_at(transfer_steps[bad])
    messages: list[Callable[[], str]] = []
    for k, b in enumerate(bad.tolist()):
        names = tuple(name for j, name in enumerate(SAVED_REGISTERS) if changed[j, b])
        items.add(int(transfer_steps[b]), "clobbered " + " ".join(names), int(rips[k]))
        messages.append(
            _clobbered_message(
                facts,
                int(call_steps[b]),
                int(transfer_steps[b]),
                int(call_index[b]),
                [
                    (n, int(before[j, b]), int(after[j, b]))
                    for j, n in enumerate(SAVED_REGISTERS)
                    if changed[j, b]
                ],
            )
        )
    resumed = np.unique(call_index).size
    never = int(facts.calls.size) - int(resumed)
    notes = []
    if never:
        notes.append(f"{never} call{'s' if never != 1 else ''} never returned: not checked")
    return _grouped(facts, "callee-saved", items, lambda i: messages[i](), notes)


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
        stacks_between = facts.rsp_owner[call_step : back_step + 1]
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
        return (
            f"{regs} changed across the call to {callee} at step {call_step}, returned "
            f"here{through} ({values_text}): {regs} {'are' if len(names) > 1 else 'is'} "
            f"callee-saved; {fix}"
        )

    return text


# --- stop ---------------------------------------------------------------------

#: Stop reasons that end a run badly: they fail `stop` unless [expect] stop names them.
BAD_STOPS = ("fault", "max_steps")


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
    else:
        what = (
            f"the run hit max_steps at step {meta.stop.step}{where} ({meta.stop.detail}) "
            "instead of ending"
        )
    what += f'; if that is what the scenario shows, say so with [expect] stop = "{reason}"'
    return _simple(facts, "stop", [(step, reason, what)])


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
    return _simple(facts, "expect", found)


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
