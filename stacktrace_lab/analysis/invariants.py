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
from dataclasses import dataclass

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


class Items:
    """The violations an invariant found, before they are grouped and described.

    Per item: its step, its kind of mistake (a name), its code site (the grouping
    key with the kind) and the item it follows from (its root, -1 for none).
    Items are added one at a time or as arrays (a million misaligned calls).
    """

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self._parts: list[tuple[I64, npt.NDArray[np.int16], U64, I64]] = []
        self._count = 0
        self._relabel: list[tuple[I64, int]] = []
        #: Per misaligned call, the transfer its frame is blamed on (alignment only).
        self.blame: I64 | None = None

    def relabel(self, indices: I64, kind: str) -> None:
        """Give the items at `indices` another kind."""
        if indices.size:
            self._relabel.append((indices, self.kind_code(kind)))

    def __len__(self) -> int:
        return self._count

    def kind_code(self, kind: str) -> int:
        if kind not in self.kinds:
            self.kinds.append(kind)
        return self.kinds.index(kind)

    def add(self, step: int, kind: str, site: int, root: int = -1) -> int:
        return self.add_many(
            np.array([step], dtype=np.int64),
            kind,
            np.array([site], dtype=np.uint64),
            np.array([root], dtype=np.int64),
        )

    def add_many(self, steps: I64, kind: str, sites: U64, roots: I64 | None = None) -> int:
        """Add one item per step; returns the index of the first."""
        first = self._count
        code = np.full(steps.shape, self.kind_code(kind), dtype=np.int16)
        root = roots if roots is not None else np.full(steps.shape, -1, dtype=np.int64)
        self._parts.append(
            (steps.astype(np.int64), code, sites.astype(np.uint64), root.astype(np.int64))
        )
        self._count += int(steps.size)
        return first

    def arrays(self) -> tuple[I64, npt.NDArray[np.int16], U64, I64]:
        if not self._parts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, np.zeros(0, dtype=np.int16), np.zeros(0, dtype=np.uint64), empty
        kind = np.concatenate([p[1] for p in self._parts])
        for indices, code in self._relabel:
            kind[indices] = code
        return (
            np.concatenate([p[0] for p in self._parts]),
            kind,
            np.concatenate([p[2] for p in self._parts]),
            np.concatenate([p[3] for p in self._parts]),
        )


def _grouped(
    facts: TraceFacts,
    invariant: str,
    items: Items,
    message: Callable[[int], str],
    notes: Sequence[str] = (),
) -> Findings:
    """Causes, consequences and the first violations from `items`; `message(i)` says
    what is wrong at item `i` (asked only for the items shown)."""
    count = len(items)
    if not count:
        return Findings(notes=tuple(notes))
    step, kind, site, root = items.arrays()
    order = np.argsort(step, kind="stable")  # items in step order
    # One key per (site, kind); a consequence is keyed by its root's key, then its kind.
    key = site * np.uint64(1024) + kind.astype(np.uint64)
    is_root = root < 0
    roots_o = order[is_root[order]]
    cause_keys, cause_first = np.unique(key[roots_o], return_index=True)
    cause_inverse = np.searchsorted(cause_keys, key[roots_o])
    cause_count = np.bincount(cause_inverse, minlength=cause_keys.size)
    cause_last = np.zeros(cause_keys.size, dtype=np.int64)
    np.maximum.at(cause_last, cause_inverse, np.arange(roots_o.size))
    # Causes by the step they first show.
    by_step = np.argsort(cause_first, kind="stable")[:MAX_CAUSES]

    follows_o = order[~is_root[order]]
    cons_cause = np.searchsorted(cause_keys, key[root[follows_o]])
    cons_key = cons_cause.astype(np.int64) * 1024 + kind[follows_o].astype(np.int64)
    cons_keys, cons_first = np.unique(cons_key, return_index=True)
    cons_inverse = np.searchsorted(cons_keys, cons_key)
    cons_count = np.bincount(cons_inverse, minlength=cons_keys.size)
    cons_last = np.zeros(cons_keys.size, dtype=np.int64)
    np.maximum.at(cons_last, cons_inverse, np.arange(follows_o.size))

    shown = order[:MAX_VIOLATIONS].tolist()
    described = set(shown)
    described |= {int(roots_o[cause_first[g]]) for g in by_step.tolist()}
    described |= {int(follows_o[i]) for i in cons_first.tolist()}
    info = facts.describe(int(step[i]) for i in described)
    violations: dict[int, Violation] = {}
    for i in sorted(described):
        where = info.get(int(step[i]))
        violations[i] = Violation(
            invariant=invariant,
            step=int(step[i]),
            rip=where.rip if where else 0,
            symbol=where.symbol if where else "",
            message=message(i),
            source=facts.source(where.rip) if where else None,
        )
    causes = []
    for g in by_step.tolist():
        first = int(roots_o[cause_first[g]])
        last = int(roots_o[cause_last[g]])
        mine = np.flatnonzero(cons_keys // 1024 == g).tolist()
        consequences = tuple(
            Consequence(
                invariant=invariant,
                kind=items.kinds[int(cons_keys[c] % 1024)],
                count=int(cons_count[c]),
                first_step=int(step[follows_o[cons_first[c]]]),
                last_step=int(step[follows_o[cons_last[c]]]),
                example=violations[int(follows_o[cons_first[c]])],
            )
            for c in mine
        )
        site_addr = int(site[first])
        causes.append(
            Cause(
                invariant=invariant,
                kind=items.kinds[int(kind[first])],
                site=site_addr,
                site_symbol=facts.symbolize(site_addr),
                site_source=facts.source(site_addr),
                count=int(cause_count[g]),
                first_step=int(step[first]),
                last_step=int(step[last]),
                first=violations[first],
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
    store_rips = np.full(stores.shape, -1, dtype=np.int64)
    planted_by = stores >= 0
    store_rips[planted_by] = facts.rips_at(facts.writes.step[stores[planted_by]]).astype(np.int64)
    # The same code entered the same way decides the same: look each up once.
    realigned: dict[int, bool] = {}
    sites: dict[tuple[int, int], tuple[int, bool]] = {}
    notes_left = MAX_VIOLATIONS
    for k, i in enumerate(entries.tolist()):
        step, target = int(t.step[i]), int(t.target[i])
        if target not in realigned:
            realigned[target] = realigns(facts, step + 1)
        if realigned[target]:
            if notes_left:
                notes_left -= 1
                notes.append(
                    f"{facts.symbolize(target)} is entered with rsp % 16 == "
                    f"{int(t.rsp[i]) % 16} at step {step + 1}, but realigns rsp "
                    "(and $-16, %rsp) before its first call: allowed"
                )
            continue
        store = int(stores[k])
        key = (int(transfer_rips[i]), int(store_rips[k]))
        made = -1
        if key not in sites or (sites[key][1] and len(items) < MAX_CAUSES):
            site, made = _entry_site(facts, i, store, int(transfer_rips[i]))
            sites.setdefault(key, (site, made >= 0))
        site = sites[key][0]
        item = items.add(min(step + 1, max(facts.steps - 1, 0)), "misaligned-entry", site)
        entry_item[i] = item
        messages[item] = _entry_message(facts, i, store, made)

    misaligned = np.flatnonzero(facts.rsp[facts.calls] % STACK_ALIGNMENT != 0)
    first_call = len(items)
    if misaligned.size:
        _misaligned_calls(facts, items, misaligned, entry_item, transfer_rips)

    def message(i: int) -> str:
        if i in messages:
            return messages[i]()
        call = int(misaligned[i - first_call])
        blamed = blame_of(call)
        if blamed >= 0:
            return _blamed_call_message(facts, call, blamed)
        return _call_message(facts, call)

    blame_of = _blame_lookup(items, first_call, misaligned)
    return _grouped(facts, "alignment", items, message, notes)


def _misaligned_calls(
    facts: TraceFacts, items: Items, misaligned: I64, entry_item: dict[int, int], rips: U64
) -> None:
    """One item per misaligned call (an index into `facts.calls`), in call order, so
    that item = first + position: a consequence of the entry or call its frame
    follows from; a cause blamed on the landing that set its frame up
    (`landing-misaligns-calls`, at that transfer); or a cause of its own, at its
    function (`misaligned-call`)."""
    calls = facts.calls
    call_rips = facts.rips_at(calls[misaligned])
    # A jmp within one function (a jump table) sets up no frame: only a ret, or a jmp
    # to other code, is a landing a misaligned call can be blamed on.
    t = facts.transfers
    within = ~t.is_ret & (facts.function_starts(t.target) == facts.function_starts(rips))
    root, blame = _attribute_calls(facts, misaligned, entry_item, ~within)
    first = len(items)
    # A root that is itself a misaligned call (-2 - call index) is that call's item.
    via_call = root < -1
    root[via_call] = first + np.searchsorted(misaligned, -2 - root[via_call])
    blamed = (root < 0) & (blame >= 0)
    site = facts.function_starts(call_rips)
    site[blamed] = rips[blame[blamed]]
    site[root >= 0] = call_rips[root >= 0]
    items.add_many(calls[misaligned], "misaligned-call", site, root)
    items.relabel(first + np.flatnonzero(blamed), "landing-misaligns-calls")
    items.blame = blame


def _blame_lookup(items: Items, first: int, misaligned: I64) -> Callable[[int], int]:
    blame = items.blame

    def lookup(call: int) -> int:
        if blame is None:
            return -1
        k = int(np.searchsorted(misaligned, call))
        return int(blame[k])

    return lookup


def _call_message(facts: TraceFacts, c: int) -> str:
    rsp = int(facts.rsp[facts.calls[c]])
    callee = facts.symbolize(int(facts.call_targets[c]))
    off = rsp % STACK_ALIGNMENT
    return (
        f"call to {callee} with rsp % 16 == {off} (rsp={rsp:#x}): {callee} will be "
        f"entered with rsp % 16 == {(rsp - 8) % 16} instead of 8; the caller's frame "
        f"is {off} bytes off the 16-byte grid, so adjust it before the call"
    )


def _blamed_call_message(facts: TraceFacts, c: int, blame: int) -> str:
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
#: `mov SOURCE, %reg`: what a stack pointer is loaded from (memory, or another register).
_MOV_TO = re.compile(r"^movq?\s+(?P<src>[^,]+(?:\([^)]*\))?)\s*,\s*%(?P<dst>\w+)$")
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
    switch ending at `step` loaded into rsp, or -1: the last `mov X(%reg), %rsp`
    before it, or `mov %rcx, %rsp` after `mov X(%reg), %rcx` (libaco)."""
    k = int(np.searchsorted(facts.calls, step)) - 1
    low = max(int(facts.calls[k]) if k >= 0 else 0, step - _RSP_LOOKBACK)
    rows = facts.trace.slice(low, step + 1, ["step", "insn", "reads"]).to_pydict()
    wanted = "rsp"  # the register whose value we follow back to memory
    for row in range(len(rows["step"]) - 1, -1, -1):
        match = _MOV_TO.match(str(rows["insn"][row]).strip())
        if match is None or match.group("dst") != wanted:
            continue
        source = match.group("src").strip()
        if source.startswith("%"):  # from another register: follow that one
            wanted = source[1:]
            continue
        if "(" not in source or not rows["reads"][row]:
            return -1
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
            f"`{info.insn}`{_at(facts, info.rip)}: save one 8 bytes lower or higher, so "
            "that the function starts with rsp % 16 == 8"
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
        if not bool(t.is_ret[i]):
            jumped = f": the jmp{_at(facts, transfer_rip)} lands on it with rsp % 16 == {rsp % 16}"
            # Without a saved stack pointer to blame, the code that jumps must fix rsp.
            fix = "" if made >= 0 else "; push a return address (or realign) before jumping to it"
            return head + jumped + fix
        if store < 0:
            return head + f": the ret{_at(facts, transfer_rip)} pops its address"
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
            # When the switch re-pushed the address itself (libco), the fix is the
            # stack pointer it was given, not the slot: that is said by `saved()`.
            advice = "" if made >= 0 else _advice(facts, region, index, step)
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
    facts: TraceFacts, misaligned: I64, entry_item: dict[int, int], blameable: B
) -> tuple[I64, I64]:
    """For each misaligned call (an index into `facts.calls`): its root and its blame.

    A shadow stack of frames per stack region, walked in step order up to the
    last misaligned call over every ret, classified landing and call. A frame
    is [entry rsp, root, blamed transfer]; a frame whose entry rsp is below the
    current rsp is over. A misaligned call inside a frame with a root follows
    from it (root: an ENTRY item >= 0, or -2 - call index for a misaligned call
    that is a cause itself); inside a frame set up by an OTHER landing (one that
    is `blameable`) it is blamed on that transfer; else it is a mistake of its
    own (-1, -1).
    """
    calls, rsp = facts.calls, facts.rsp
    t = facts.transfers
    r = facts.returns
    n = facts.steps
    last = int(calls[misaligned[-1]])
    owner_all = np.append(facts.rsp_owner, np.int16(facts.final_owner)).astype(np.int64)

    # Events in step order: 0 = a ret pops its slot, 1 = a classified landing, 2 = a call.
    # At one step a ret pops before its landing; a landing comes before a call after it.
    ret_idx = np.flatnonzero(r.step <= last)
    land_idx = np.flatnonzero(t.step < last)
    call_idx = np.flatnonzero(calls <= last)
    ev_step = np.concatenate([r.step[ret_idx], t.step[land_idx] + 1, calls[call_idx]])
    ev_kind = np.concatenate(
        [
            np.zeros(ret_idx.size, dtype=np.int64),
            np.ones(land_idx.size, dtype=np.int64),
            np.full(call_idx.size, 2, dtype=np.int64),
        ]
    )
    ev_index = np.concatenate([ret_idx, land_idx, call_idx])
    # What moves frames: a ret pops frames at or below its slot (entry rsp <= slot, i.e.
    # below slot + 1); a landing or a call, frames below its rsp.
    ev_limit = np.concatenate(
        [r.slot[ret_idx] + np.uint64(1), t.rsp[land_idx], rsp[calls[call_idx]]]
    ).astype(np.int64)
    ev_owner = owner_all[np.minimum(ev_step, n)]
    order = np.lexsort((ev_kind, ev_step))

    # What a landing pushes: ENTRY -> a frame with its item as root; OTHER -> blame.
    landing_kind = t.landing.astype(np.int64)
    misaligned_set = np.zeros(calls.size, dtype=np.bool_)
    misaligned_set[misaligned] = True
    position = np.full(calls.size, -1, dtype=np.int64)
    position[misaligned] = np.arange(misaligned.size)
    root_out = np.full(misaligned.size, -1, dtype=np.int64)
    blame_out = np.full(misaligned.size, -1, dtype=np.int64)

    frames: dict[int, list[tuple[int, int, int]]] = {}
    if n:
        frames[int(owner_all[0])] = [(int(rsp[0]), -1, -1)]
    entry, other = int(Landing.ENTRY), int(Landing.OTHER)
    for kind, index, limit, owner in zip(
        ev_kind[order].tolist(),
        ev_index[order].tolist(),
        ev_limit[order].tolist(),
        ev_owner[order].tolist(),
        strict=True,
    ):
        stack = frames.get(owner)
        if stack is None:
            stack = frames[owner] = []
        while stack and stack[-1][0] < limit:
            stack.pop()
        if kind == 0:
            continue
        if kind == 1:
            landing = landing_kind[index]
            if landing == entry:
                stack.append((limit, entry_item.get(index, -1), -1))
            elif landing == other and blameable[index]:
                stack.append((limit, -1, index))
            continue
        root = -1
        if misaligned_set[index]:
            k = position[index]
            top = stack[-1] if stack else (0, -1, -1)
            if top[1] != -1:
                root_out[k] = root = top[1]
            else:
                blame_out[k] = top[2]
                root = -2 - index
        stack.append((limit - 8, root, -1))
    return root_out, blame_out


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
        made = _saved_rsp_write(facts, int(r.step[i])) if k < MAX_VIOLATIONS else -1
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
    roots = _nested_roots(bad, call_steps, transfer_steps, changed, after)
    for k, b in enumerate(bad.tolist()):
        names = tuple(name for j, name in enumerate(SAVED_REGISTERS) if changed[j, b])
        kind = "clobbered " + " ".join(names)
        items.add(int(transfer_steps[b]), kind, int(rips[k]), int(roots[k]))
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
    resumed = np.zeros(facts.calls.size, dtype=np.bool_)
    resumed[call_index] = True
    never = int(facts.calls.size) - int(np.count_nonzero(resumed))
    notes = []
    if never:
        notes.append(f"{never} call{'s' if never != 1 else ''} never returned: not checked")
    return _grouped(facts, "callee-saved", items, lambda i: messages[i](), notes)


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
                and np.array_equal(changed[:, a], changed[:, b])
                and np.array_equal(after[changed[:, b], a], after[changed[:, b], b])
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
