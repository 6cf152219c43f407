"""`alignment`: System V x86-64 wants rsp % 16 == 0 before every call.

- Before every `call`: rsp % 16 == 0.
- Where a switch enters a function (`transfers.Landing.ENTRY`): rsp % 16 == 8,
  as a call would have left it, unless the code realigns rsp (`and $-16,
  %rsp`) before its first call (a note). Resumes, returns, trampolines and
  other landings have no rule of their own.

A misaligned entry's cause is placed where the mistake is: the store that
planted the popped address when another function made it (a spawn); else
the store that saved the stack pointer the switch loaded (a make-context);
else the transfer itself (a trampoline that forgot to realign). Misaligned
calls are attributed by a shadow stack of frames (`_attribute_calls`): a call
inside a frame entered misaligned follows from that entry (a consequence);
inside a frame set up by another kind of landing it is blamed on that
landing; else it is its function's own mistake.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ..arch import STACK_ALIGNMENT, WORD
from ..layout import Region
from .causes import MAX_CAUSES, Items, code_at, grouped
from .events import TraceFacts
from .kinds import I64, U64, B, Kind, Origin
from .model import MAX_VIOLATIONS, Findings
from .transfers import Landing, realigns, saved_stack_pointer, stack_pointer_made


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
        landed = int(facts.threads.next_rows(np.array([step], dtype=np.int64))[0])
        if target not in realigned:
            realigned[target] = realigns(facts, landed)
        if realigned[target]:
            if notes_left:
                notes_left -= 1
                notes.append(
                    f"{facts.symbolize(target)} is entered with rsp % 16 == "
                    f"{int(t.rsp[i]) % 16} at step {landed}, but realigns rsp "
                    "(and $-16, %rsp) before its first call: allowed"
                )
            continue
        store = int(stores[k])
        key = (int(transfer_rips[i]), int(store_rips[k]))
        made = computed = -1
        if key not in sites or (sites[key][1] and len(items) < MAX_CAUSES):
            site, made, computed = _entry_site(facts, i, store, int(transfer_rips[i]))
            sites.setdefault(key, (site, made >= 0 or computed >= 0))
        site = sites[key][0]
        item = items.add(min(landed, max(facts.steps - 1, 0)), "misaligned-entry", site)
        entry_item[i] = item
        messages[item] = _entry_message(facts, i, store, made, computed)

    misaligned = np.flatnonzero(facts.rsp[facts.calls] % STACK_ALIGNMENT != 0)
    first_call = len(items)
    blame = np.full(misaligned.shape, -1, dtype=np.int64)
    if misaligned.size:
        blame = _misaligned_calls(facts, items, misaligned, entry_item, transfer_rips)

    def message(i: int) -> str:
        if i in messages:
            return messages[i]()
        k = i - first_call  # the k-th misaligned call
        call, blamed = int(misaligned[k]), int(blame[k])
        if blamed >= 0:
            return _blamed_call_message(facts, call, blamed)
        return _call_message(facts, call)

    return grouped(facts, "alignment", items, message, notes)


def _misaligned_calls(
    facts: TraceFacts, items: Items, misaligned: I64, entry_item: dict[int, int], rips: U64
) -> I64:
    """One item per misaligned call (an index into `facts.calls`), in call order, so
    that item = first + position: a consequence of the entry or call its frame
    follows from; a cause blamed on the landing that set its frame up
    (`landing-misaligns-calls`, at that transfer); or a cause of its own, at its
    function (`misaligned-call`). Returns, per call, the transfer it is blamed
    on, or -1."""
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
    blame[~blamed] = -1
    return blame


def _call_message(facts: TraceFacts, c: int) -> str:
    rsp = int(facts.rsp[facts.calls[c]])
    callee = facts.symbolize(int(facts.call_targets[c]))
    off = rsp % STACK_ALIGNMENT
    made = _misaligned_by(facts, int(facts.calls[c]))
    by = ""
    if made is not None:
        step, crossed = made
        info = facts.describe([step])[step]
        insn = f"`{info.insn}`{code_at(facts, info.rip)}"
        if crossed:
            by = f"; rsp went off the 16-byte grid at step {step} by {insn}"
        else:
            by = f"; the last instruction to move rsp before the call is {insn} (step {step})"
    return (
        f"call to {callee} with rsp % 16 == {off} (rsp={rsp:#x}): {callee} will be "
        f"entered with rsp % 16 == {(rsp - 8) % 16} instead of 8; the caller's frame "
        f"is {off} bytes off the 16-byte grid, so adjust it before the call{by}"
    )


#: How far back from a misaligned call to look for the instruction that misaligned rsp.
_MISALIGN_LOOKBACK = 4096


def _misaligned_by(facts: TraceFacts, call: int) -> tuple[int, bool] | None:
    """The caller's own instruction (calls it made are skipped) to blame for rsp at `call`:
    (its step, True) if it moved rsp from the grid onto the misaligned value, else (the
    step of the caller's last instruction that moved rsp, False); None if it moved none."""
    off = int(facts.rsp[call]) % STACK_ALIGNMENT
    depth = 0
    last_move: int | None = None
    for j in range(call - 1, max(call - 1 - _MISALIGN_LOOKBACK, -1), -1):
        kind = int(facts.kind[j])
        if kind == Kind.RET:
            depth += 1
        elif kind == Kind.CALL:
            if depth == 0:
                break  # the call that entered the caller
            depth -= 1
        elif depth == 0:
            before, after = int(facts.rsp[j]), int(facts.rsp[j + 1])
            if before % STACK_ALIGNMENT != off and after % STACK_ALIGNMENT == off:
                return j, True
            if before != after and last_move is None:
                last_move = j
    return (last_move, False) if last_move is not None else None


def _blamed_call_message(facts: TraceFacts, c: int, blame: int) -> str:
    t = facts.transfers
    rsp = int(facts.rsp[facts.calls[c]])
    callee = facts.symbolize(int(facts.call_targets[c]))
    step = int(t.step[blame])
    what = "ret" if bool(t.is_ret[blame]) else "jmp"
    target = facts.symbolize(int(t.target[blame]))
    src = code_at(facts, int(facts.rips_at(np.array([step]))[0]))
    return (
        f"call to {callee} with rsp % 16 == {rsp % 16} (rsp={rsp:#x}): rsp was set up by "
        f"the {what} at step {step}{src}, which landed on {target} with rsp % 16 == "
        f"{int(t.rsp[blame]) % 16}; that landing is not a function entry, a resume or a "
        "return, so its rsp must already be what the calls from there need"
    )


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


def _moved_after_loading(facts: TraceFacts, i: int, made: int) -> bool:
    """Transfer `i` is a `ret` of a switch that planted the address itself (`push` then
    `ret`, libco) after loading the stack pointer `made` saved, and the slot it popped
    is neither where that pointer points (`lea 8(%rsp), %rsp; push`: libco's
    coctx_swap) nor one slot under it (a plain `push`): the switch moved rsp wrongly
    before planting, and it is to blame, not the code that saved the pointer."""
    t = facts.transfers
    if not bool(t.is_ret[i]):
        return False
    loaded = facts.write_value(made)
    return int(t.rsp[i]) - WORD not in (loaded, loaded - WORD)


def _entry_message(
    facts: TraceFacts, i: int, store: int, made: int, computed: int = -1
) -> Callable[[], str]:
    def saved() -> str:
        if computed >= 0:
            info = facts.describe([computed])[computed]
            return (
                f"; the stack pointer the switch loaded was computed at step {computed} by "
                f"`{info.insn}`{code_at(facts, info.rip)}, which left it "
                f"{(int(facts.transfers.rsp[i]) - 8) % STACK_ALIGNMENT} bytes off where it "
                "must be: compute it that much lower or higher, so that the function starts "
                "with rsp % 16 == 8"
            )
        if made < 0:
            return ""
        made_step = int(facts.writes.step[made])
        info = facts.describe([made_step])[made_step]
        return (
            f"; the stack pointer it starts on was saved at step {made_step} by "
            f"`{info.insn}`{code_at(facts, info.rip)}: save one 8 bytes lower or higher, so "
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
            owner = facts.stack_name_at(
                int(facts.threads.next_rows(np.array([step], dtype=np.int64))[0])
            )
            first = f", the first code to run on {owner}" if owner else ""
        head = (
            f"{target} entered with rsp % 16 == {rsp % 16} (rsp={rsp:#x}){first}, where a call "
            f"would have left 8"
        )
        if not bool(t.is_ret[i]):
            jumped = (
                f": the jmp{code_at(facts, transfer_rip)} lands on it with rsp % 16 == {rsp % 16}"
            )
            # Without a saved stack pointer to blame, the code that jumps must fix rsp.
            fix = (
                ""
                if made >= 0 or computed >= 0
                else "; push a return address (or realign) before jumping to it"
            )
            return head + jumped + fix
        if store < 0:
            return head + f": the ret{code_at(facts, transfer_rip)} pops its address"
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
            loaded = saved_stack_pointer(facts, step) if made < 0 else -1
            if loaded >= 0 and _moved_after_loading(facts, i, loaded):
                value = facts.write_value(loaded)
                saved_at = int(facts.writes.step[loaded])
                advice = (
                    f"; the switch loaded the stack pointer {facts.where(value)} saved at step "
                    f"{saved_at} and moved rsp {slot - value:+d} bytes before planting: plant "
                    "the address where the loaded stack pointer points"
                )
        return head + (
            f": the ret{code_at(facts, transfer_rip)} pops the address planted {where} at step "
            f"{store_step} by `{info.insn}`{code_at(facts, info.rip)}, {off} bytes off the "
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
    owner_all = facts.owners.astype(np.int64)

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
    for kind, index, limit, owner in _in_blocks(order, ev_kind, ev_index, ev_limit, ev_owner):
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


#: Events turned into Python values at a time (a million at once would take ~150 MiB).
_EVENT_BLOCK = 1 << 16


def _in_blocks(
    order: I64, kind: I64, index: I64, limit: I64, owner: I64
) -> Iterator[tuple[int, int, int, int]]:
    """The events in `order`, as Python ints, a block at a time."""
    for lo in range(0, order.size, _EVENT_BLOCK):
        chosen = order[lo : lo + _EVENT_BLOCK]
        yield from zip(
            kind[chosen].tolist(),
            index[chosen].tolist(),
            limit[chosen].tolist(),
            owner[chosen].tolist(),
            strict=True,
        )


def _entry_site(facts: TraceFacts, i: int, store: int, transfer_rip: int) -> tuple[int, int, int]:
    """Where a misaligned entry's mistake is, the write that saved its stack pointer
    (-1 if not found), and the step that computed it (-1 if not looked for or found).
    The store that planted the popped address, when another function made it (a
    spawn); else the store that saved the stack pointer the switch loaded (a
    make-context); else the planting store; else, for a jmp whose code since the switch
    pushed (a trampoline that pushes a return address, as Boost.Context's does), the
    instruction that computed the stack pointer the switch loaded, 8 bytes off (a
    make-context that returns it: `make_fcontext`); else the transfer (a trampoline
    that pushed nothing must push or realign before it jumps)."""
    t = facts.transfers
    if store >= 0:
        store_rip = facts.writes_rip(store)
        if facts.function_start(store_rip) != facts.function_start(transfer_rip):
            return store_rip, -1, -1
    made = saved_stack_pointer(facts, int(t.step[i]))
    if made >= 0 and store >= 0 and _moved_after_loading(facts, i, made):
        return facts.writes_rip(store), -1, -1
    if made >= 0:
        return facts.writes_rip(made), made, -1
    if store >= 0:
        return facts.writes_rip(store), -1, -1
    if not bool(t.is_ret[i]):
        step = int(t.step[i])
        switches = facts.switch_steps()
        before = switches[switches <= step]
        if before.size:
            loaded = int(before[-1])
            since = facts.rsp[loaded + 1 : step + 1].astype(np.int64)
            if since.size > 1 and bool((np.diff(since) < 0).any()):
                computed = stack_pointer_made(facts, loaded, STACK_ALIGNMENT)
                if computed >= 0:
                    return int(facts.rips_at(np.array([computed]))[0]), -1, computed
    return transfer_rip, -1, -1
