"""Where control lands: every transfer that is not the `ret` of a matched call, classified.

A `ret` that pops the slot its own `call` pushed is an ordinary return and
needs nothing more. Every other transfer of control — a `ret` of a planted
address, a `ret` of a re-pushed copy of a return address, an indirect `jmp`
through a register or memory — is judged by where it lands, in this order
(docs/invariants.md, "Where a switch lands"):

1. `RESUME`: the target is the return address of an earlier `call` and rsp
   equals that call's rsp before it pushed: the call comes back (libco's
   re-pushed `ret`, Boost's `pop %r8; jmp *%r8`, libaco, marl, `longjmp`).
   The latest such call is the one resumed.
2. `RETURN`: a `ret` that pops the slot holding the return address of a
   function when it was entered (a call's landing, or an `ENTRY` below),
   whatever was planted there (Boost's `finish`, the tutorial's `skip`).
3. `ENTRY` of a function: the target is a function (a `call` lands there in
   this trace, the source declares it with `.type name, @function`, or an
   earlier transfer entered it as the first code on a stack: a new coroutine
   started again on a reused stack).
4. `TRAMPOLINE`: the landing code transfers on (`ret`, indirect `jmp`) before
   any `call`; no rule of its own. If it was the first code on its stack, the
   next transfer out of it inherits that. A leaf function that returns through
   the planted slot right above its entry rsp is a function, not a trampoline.
5. `ENTRY` as the first code to run on a stack that has not run before (the
   seed's `hello` on `green`, a new coroutine), directly or through trampolines.
6. `OTHER`: anything else; no rule of its own.

Only `ENTRY` has an alignment rule (rsp % 16 == 8, unless the code realigns
rsp with `and $-16, %rsp` before its first call); a `RESUME` is where
`callee-saved` compares registers with their values before the call.

This module is the API other features build on (backtraces, the stepper):
`classify(facts)` gives a `Transfers` table; `TraceFacts.transfers` caches it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from capstone import x86 as cs_x86

from ..arch import WORD
from ..layout import Region
from ..trace.format import TraceMetadata
from ..trace.reader import Trace
from .decoded import GENERAL_REGISTERS, Decoded, OperandType, decode, decode_rows
from .kinds import I16, I64, U8, U64, B, Jumps, Origin, Returns, ThreadRuns, Writes
from .memory import StepKinds, StepRsp


class TraceFacts(Protocol):
    """What classifying needs of the shared pass (analysis.events.TraceFacts has it all)."""

    trace: Trace
    meta: TraceMetadata
    steps: int
    rsp: StepRsp
    kind: StepKinds
    writes: Writes
    calls: I64
    call_targets: U64
    call_pushed: U64
    returns: Returns
    jumps: Jumps
    stacks: tuple[Region, ...]
    threads: ThreadRuns

    @property
    def owners(self) -> I16: ...

    @property
    def rsp_owner(self) -> I16: ...

    @property
    def final_owner(self) -> int: ...

    def is_code(self, addr: int) -> bool: ...

    def rsp_after(self, steps: I64) -> U64: ...


class Landing(IntEnum):
    """What a transfer of control landed on (see the module docstring for the order)."""

    RESUME = 1
    RETURN = 2
    ENTRY = 3
    TRAMPOLINE = 4
    OTHER = 5

    @property
    def label(self) -> str:
        return self.name.lower()


#: How far past an entry to look for a realignment before its first call.
_REALIGN_WINDOW = 64
#: `.type name, @function` (or `%function`, `STT_FUNC`) in the scenario's source.
_TYPE_FUNCTION = re.compile(
    r"^\s*\.type\s+([A-Za-z_.$][\w.$]*)\s*,\s*[@%]?(function|STT_FUNC)\b", re.M
)


@dataclass(frozen=True)
class Transfers:
    """Every transfer that is not the `ret` of a matched call, in step order.

    Index `i` describes the `ret` or indirect `jmp` at `step[i]`; its landing is
    step `step[i] + 1` (or the end of the run), at `target` with rsp `rsp`.
    """

    step: I64
    #: The transfer is a `ret` (else an indirect `jmp`).
    is_ret: B
    target: U64
    #: rsp at the landing, after the transfer.
    rsp: U64
    #: A `Landing` per transfer.
    landing: U8
    #: RESUME: the index into `facts.calls` of the call that comes back; else -1.
    call: I64
    #: RETURN and ENTRY: the step at which the function was entered; else -1.
    entered: I64
    #: ENTRY: the landing is the first code on its stack (directly or through trampolines).
    first_code: B

    def __len__(self) -> int:
        return int(self.step.size)

    def at_step(self, step: int) -> int | None:
        """The index of the transfer at `step`, if there is one."""
        i = int(np.searchsorted(self.step, step))
        return i if i < len(self) and int(self.step[i]) == step else None

    def kind(self, i: int) -> Landing:
        return Landing(int(self.landing[i]))


def call_return_addresses(facts: TraceFacts) -> U64:
    """The return address each call pushed (the 8-byte write of its step), found by
    the shared pass."""
    return facts.call_pushed


def function_addresses(facts: TraceFacts) -> set[int]:
    """Where functions start: every call's landing, and labels declared `@function`."""
    functions = set(np.unique(facts.call_targets).tolist())
    for match in _TYPE_FUNCTION.finditer(facts.meta.scenario.source):
        addr = facts.meta.symbols.get(match.group(1))
        if addr is not None:
            functions.add(int(addr))
    return functions


def classify(facts: TraceFacts) -> Transfers:
    r = facts.returns
    # The sentinel under the entry function is the machine's, not a switch, and a return
    # to a frame entered before a `--from` trace began is a call's: neither is classified.
    unmatched = np.flatnonzero(
        (r.origin != Origin.CALL) & (r.origin != Origin.ENTRY) & (r.origin != Origin.BEFORE)
    )
    steps = np.concatenate([r.step[unmatched], facts.jumps.step])
    targets = np.concatenate([r.value[unmatched], facts.jumps.target])
    is_ret = np.concatenate(
        [np.ones(unmatched.size, dtype=np.bool_), np.zeros(facts.jumps.step.size, dtype=np.bool_)]
    )
    order = np.argsort(steps, kind="stable")
    steps, targets, is_ret = steps[order], targets[order], is_ret[order]
    rsp = facts.rsp_after(steps)
    slot = facts.rsp[steps]  # a ret's popped slot
    m = int(steps.size)

    resumed = _latest_calls(facts, targets, rsp, steps)
    # Entries by call: the function's return-address slot is the call's rsp - 8.
    call_entry_slot = facts.rsp[facts.calls] - np.uint64(8)
    by_call = _latest_match(call_entry_slot, facts.threads.next_rows(facts.calls), slot, steps)

    functions = function_addresses(facts)
    n = facts.steps
    # The row where the transfer landed: the next of its own thread (events.ThreadRuns).
    landing_step = facts.threads.next_rows(steps)
    owner = facts.owners[np.minimum(landing_step, n)]
    # The first transfer on (ret or indirect jmp) and the first call at or after each landing.
    # Rets and indirect jmps never share a step: both, in step order (a stable sort of
    # two sorted runs merges them in linear time).
    onward = np.sort(np.concatenate([facts.returns.step, facts.jumps.step]), kind="stable")
    next_out = _next_at_or_after(onward, landing_step, n)
    next_call = _next_at_or_after(facts.calls, landing_step, n)
    passes_on = (next_out < next_call) & ~_returns_from_own_slot(facts, next_out, rsp)
    # A stack has run once a call was made on it, or code landed there (not a trampoline).
    first_call_on = np.full(len(facts.stacks), n + 1, dtype=np.int64)
    call_owner = facts.rsp_owner[facts.calls]
    on_stack = call_owner >= 0
    # The first call on each stack: one pass over the calls, not one per stack.
    called, first_index = np.unique(call_owner[on_stack], return_index=True)
    first_call_on[called.astype(np.int64)] = facts.calls[on_stack][first_index]
    ran: set[int] = set()
    if n:
        ran.add(int(facts.rsp_owner[0]))

    landing = np.full(m, Landing.OTHER, dtype=np.uint8)
    entered = np.full(m, -1, dtype=np.int64)
    first_code = np.zeros(m, dtype=np.bool_)
    entries: dict[int, int] = {}  # return-address slot -> step of the latest ENTRY there
    pending_first: set[int] = set()  # steps of transfers out of a first-code trampoline
    for i in range(m):
        step, target, k = int(steps[i]), int(targets[i]), int(owner[i])
        first = step in pending_first or (k >= 0 and k not in ran and int(first_call_on[k]) > step)
        if not facts.is_code(target):
            kind = Landing.OTHER  # not code at all: ret-source says so; no rule here
        elif resumed[i] >= 0:
            kind = Landing.RESUME
        elif is_ret[i] and (by_call[i] >= 0 or int(slot[i]) in entries):
            kind = Landing.RETURN
            from_call = (
                int(facts.threads.next_rows(facts.calls[by_call[i] : by_call[i] + 1])[0])
                if by_call[i] >= 0
                else -1
            )
            entered[i] = max(from_call, entries.get(int(slot[i]), -1))
        elif target in functions:
            kind = Landing.ENTRY
        elif passes_on[i]:
            kind = Landing.TRAMPOLINE
            if first:
                pending_first.add(int(next_out[i]))
        elif first:
            kind = Landing.ENTRY
        else:
            kind = Landing.OTHER
        if kind == Landing.ENTRY:
            first_code[i] = first
            entered[i] = int(landing_step[i])
            entries[int(rsp[i])] = int(landing_step[i])
            # Code once started as a function is one: a new coroutine on a reused stack.
            functions.add(target)
        if kind != Landing.TRAMPOLINE and k >= 0:
            ran.add(k)
        landing[i] = kind
    return Transfers(
        step=steps.astype(np.int64),
        is_ret=is_ret,
        target=targets.astype(np.uint64),
        rsp=rsp,
        landing=landing,
        call=resumed,
        entered=entered,
        first_code=first_code,
    )


#: How far before a switch's transfer to look for the load of its stack pointer.
_RSP_LOOKBACK = 64
#: The moves that can load a 64-bit register whole, from memory or another register.
_STACK_POINTER_MOVES = frozenset({cs_x86.X86_INS_MOV, cs_x86.X86_INS_MOVQ})


def saved_stack_pointer(facts: TraceFacts, step: int) -> int:
    """The write (index into `facts.writes`) that stored the stack pointer which the
    switch ending at `step` loaded into rsp, or -1: the last `mov X(%reg), %rsp`
    before it, or `mov %rcx, %rsp` after `mov X(%reg), %rcx` (libaco)."""
    k = int(np.searchsorted(facts.calls, step)) - 1
    low = max(int(facts.calls[k]) if k >= 0 else 0, step - _RSP_LOOKBACK)
    rows = facts.trace.slice(low, step + 1, ["step", "rip", "insn_bytes", "reads"]).to_pydict()
    decoded = decode_rows(rows["rip"], rows["insn_bytes"])
    wanted = "rsp"  # the register whose value we follow back to memory
    for row in range(len(rows["step"]) - 1, -1, -1):
        insn = decoded[row]
        # Only a 64-bit move sets the whole stack pointer; what else changed rsp since
        # (the pops and the `ret` of the switch) adjusts the loaded value, so look past it.
        if insn.id not in _STACK_POINTER_MOVES or not insn.writes_register(wanted):
            continue
        destination, source = insn.operands
        if destination.size != WORD:
            continue
        if source.type is OperandType.REG and source.register in GENERAL_REGISTERS:
            wanted = source.register  # from another register: follow that one
            continue
        if source.type is not OperandType.MEM or not rows["reads"][row]:
            return -1  # an immediate, or a register outside the trace (`movq %xmm0, %rsp`)
        addr = int(rows["reads"][row][0]["addr"])
        load_step = int(rows["step"][row])
        w = facts.writes
        hits = np.flatnonzero((w.addr == np.uint64(addr)) & (w.step < load_step))
        return int(hits[-1]) if hits.size else -1
    return -1


#: How far before a switch to follow the stack pointer it loaded back to where it was
#: computed (a make-context may run long before the first switch to its context).
_MADE_LOOKBACK = 1 << 16
#: Moves, loads and pops a value is followed through, and the arithmetic it may be
#: computed by (`and $-16`, `lea -0x40(%rax), %rax`, `sub $0x48, %rax`).
_CARRIES = frozenset({cs_x86.X86_INS_MOV, cs_x86.X86_INS_MOVQ, cs_x86.X86_INS_POP})
_COMPUTES = frozenset(
    {cs_x86.X86_INS_LEA, cs_x86.X86_INS_ADD, cs_x86.X86_INS_SUB, cs_x86.X86_INS_AND}
)
_MAX_HOPS = 32


def stack_pointer_made(facts: TraceFacts, switch_step: int, grid: int) -> int:
    """The step of the instruction that put the stack pointer the switch at
    `switch_step` loaded (rsp after it) off the `grid`-byte grid, or -1.

    The value is followed back by the registers' recorded values, through register
    moves, a load or `pop` and the store that wrote that memory, and a function's
    return value (Boost.Context's `make_fcontext` returns the context in rax, the
    caller keeps it in memory, `jump_fcontext` loads it into rsp from rdi): to the last
    arithmetic that changed its residue modulo `grid` (a `lea` 8 bytes off), or to an
    offset taken right after an `and` put the value on the grid (a `lea` a multiple of
    16 off, where the make-context needed 8 more: it alone decides the residue). -1 when
    the chain leaves the registers and memory the trace shows, an `and` aligned the
    value (nothing before it decided the residue), or nothing within `_MADE_LOOKBACK`
    steps before the switch changed the residue."""
    if switch_step + 1 >= facts.steps:
        return -1
    low = max(0, switch_step - _MADE_LOOKBACK)
    rows = facts.trace.slice(low, switch_step + 2, [*_REGISTER_ORDER, "rip", "insn_bytes"])
    values: npt.NDArray[np.uint64] = np.stack(
        [rows.column(n).to_numpy().astype(np.uint64) for n in _REGISTER_ORDER], axis=1
    )  # rows x registers
    value = int(values[-1, _REGISTER_ORDER.index("rsp")])
    at = rows.num_rows - 1  # follow the value from before this row
    for _hop in range(_MAX_HOPS):
        wrote = _wrote_value(rows, values, at, value)
        if wrote is None:
            return -1
        j, insn, register = wrote
        source = insn.source
        if insn.id in _CARRIES and insn.id != cs_x86.X86_INS_POP:
            if source is not None and source.type is OperandType.REG:
                at = j  # from another register, which held it already
                continue
            if source is None or source.type is not OperandType.MEM:
                return -1
        if insn.id in _CARRIES:  # a load or a pop: the store that wrote the memory
            loaded = facts.trace.slice(low + j, low + j + 1, ["reads"]).column(0)[0].as_py()
            if not loaded:
                return -1
            w = facts.writes
            hits = np.flatnonzero((w.addr == np.uint64(loaded[0]["addr"])) & (w.step < low + j))
            if not hits.size or int(w.step[hits[-1]]) < low:
                return -1
            at = int(w.step[hits[-1]]) - low  # the store's register held it there
            continue
        if insn.id not in _COMPUTES:
            return -1
        operand = register
        if insn.id == cs_x86.X86_INS_LEA:
            if source is None or source.base not in _REGISTER_ORDER:
                return -1  # rip-relative or absolute: an address, not a pointer kept
            operand = str(source.base)
        before = int(values[j, _REGISTER_ORDER.index(operand)])
        if before % grid != value % grid:
            return low + j
        if insn.id == cs_x86.X86_INS_AND:
            return -1
        if _aligned_just_before(rows, j, operand):
            # An offset taken right after `and $-16`: it alone decides the residue
            # (Boost's `lea -0x48` needs the 8; a `-0x50` keeps it on the grid).
            return low + j
        value, at = before, j  # the residue was there before: follow the operand
    return -1


#: How many instructions before an offset `_aligned_just_before` looks for the `and`.
_ALIGN_REACH = 4


def _aligned_just_before(rows: pa.Table, j: int, register: str) -> bool:
    """Did one of the few instructions before row `j` round `register` down to a
    16-byte boundary (`and $-16, %rax`, `is_realign`'s rule)? An `and` that found the
    value aligned changed nothing, so the registers' values alone do not show it."""
    start = max(0, j - _ALIGN_REACH)
    rips, code = rows.column("rip"), rows.column("insn_bytes")
    for k in range(j - 1, start - 1, -1):
        insn = decode(int(rips[k].as_py()), code[k].as_py() or b"")
        if is_realign(insn, register):
            return True
        if insn.writes_register(register):
            return False  # the register got its value after any `and`
    return False


#: The general registers in a fixed order: the columns of `stack_pointer_made`'s matrix.
_REGISTER_ORDER = sorted(GENERAL_REGISTERS)


def _wrote_value(
    rows: pa.Table, values: npt.NDArray[np.uint64], at: int, value: int
) -> tuple[int, Decoded, str] | None:
    """The last row before `at` whose instruction wrote `value` into its destination
    register (it held something else before): (row, instruction, register)."""
    target = np.uint64(value)
    became = (values[1 : at + 1] == target) & (values[:at] != target)
    rips, code = rows.column("rip"), rows.column("insn_bytes")
    for j in np.flatnonzero(became.any(axis=1))[::-1].tolist():
        insn = decode(int(rips[j].as_py()), code[j].as_py() or b"")
        written = insn.operands[0] if insn.id == cs_x86.X86_INS_POP else insn.destination
        if (
            written is not None
            and written.type is OperandType.REG
            and written.register in _REGISTER_ORDER
            and became[j, _REGISTER_ORDER.index(written.register)]
        ):
            return j, insn, written.register
    return None  # only registers that got it by chance (or none)


def _returns_from_own_slot(facts: TraceFacts, onward: I64, landing_rsp: U64) -> B:
    """Is each onward transfer a `ret` that pops the slot right at the landing's rsp, and
    not what a call pushed? Then the landing code is a leaf function returning (its
    return address planted under it), not a trampoline passing control on."""
    r = facts.returns
    out = np.zeros(onward.shape, dtype=np.bool_)
    if not len(r):
        return out
    pos = np.clip(np.searchsorted(r.step, onward), 0, len(r) - 1)
    is_ret = r.step[pos] == onward
    origin = r.origin[pos[is_ret]]
    out[is_ret] = (r.slot[pos[is_ret]] == landing_rsp[is_ret]) & (
        (origin != Origin.CALL) & (origin != Origin.BEFORE)
    )
    return out


def realigns(facts: TraceFacts, landing_step: int) -> bool:
    """Does the code at `landing_step` realign rsp (`and $-16, %rsp`) before its first call?"""
    calls = facts.calls
    k = int(np.searchsorted(calls, landing_step))
    stop = int(calls[k]) if k < calls.size else facts.steps
    stop = min(stop, landing_step + _REALIGN_WINDOW, facts.steps)
    if stop <= landing_step:
        return False
    rows = facts.trace.slice(landing_step, stop, ["rip", "insn_bytes"])
    decoded = decode_rows(rows.column("rip").to_pylist(), rows.column("insn_bytes").to_pylist())
    return any(is_realign(insn) for insn in decoded)


def is_realign(insn: Decoded, register: str = "rsp") -> bool:
    """Is `insn` `and $-N, %rsp` (or of another `register`) with N a power of two of at
    least 16: the value rounded down to a 16-byte (or coarser) boundary? `and $-8` would
    not give a call's alignment."""
    if insn.id != cs_x86.X86_INS_AND or not insn.writes_register(register):
        return False
    destination, mask = insn.operands
    if destination.size != WORD or mask.type is not OperandType.IMM or mask.imm >= 0:
        return False
    boundary = -mask.imm
    return boundary >= 16 and boundary & (boundary - 1) == 0


def _latest_calls(facts: TraceFacts, targets: U64, rsp: U64, steps: I64) -> I64:
    """For each transfer, the latest earlier call whose return address is its target
    and whose rsp before the push is its landing rsp; -1 when there is none."""
    calls = facts.calls
    if not calls.size or not steps.size:
        return np.full(steps.shape, -1, dtype=np.int64)
    ret_addr = call_return_addresses(facts)
    call_rsp = facts.rsp[calls]
    found = _latest_match(_pair_key(ret_addr, call_rsp), calls, _pair_key(targets, rsp), steps)
    ok = found >= 0
    safe = np.clip(found, 0, None)
    # The key is a hash of the pair: confirm both halves.
    ok &= (ret_addr[safe] == targets) & (call_rsp[safe] == rsp)
    return np.where(ok, found, -1).astype(np.int64)


def _pair_key(a: U64, b: U64) -> U64:
    with np.errstate(over="ignore"):
        key: U64 = a ^ (b * np.uint64(0x9E3779B97F4A7C15))
    return key


def _latest_match(keys: U64, key_steps: I64, queries: U64, query_steps: I64) -> I64:
    """For each query, the index (into `keys`) of the latest entry with the same key
    and a step before the query's step; -1 if none."""
    out = np.full(queries.shape, -1, dtype=np.int64)
    if not keys.size or not queries.size:
        return out
    order = np.lexsort((key_steps, keys))
    sorted_keys, sorted_steps = keys[order], key_steps[order]
    lo = np.searchsorted(sorted_keys, queries, side="left")
    hi = np.searchsorted(sorted_keys, queries, side="right")
    for i in np.flatnonzero(hi > lo).tolist():
        a, b = int(lo[i]), int(hi[i])
        j = int(np.searchsorted(sorted_steps[a:b], query_steps[i], side="left")) - 1
        if j >= 0:
            out[i] = int(order[a + j])
    return out


def _next_at_or_after(events: I64, steps: I64, n: int) -> I64:
    pos = np.searchsorted(events, steps, side="left")
    out = np.full(steps.shape, n + 1, dtype=np.int64)
    inside = pos < events.size
    out[inside] = events[pos[inside]]
    return out
