"""The shared pass: the stack events of a trace, derived once for every invariant and plot.

One read of the trace, row group by row group, of the columns `rip`, `rsp`,
`insn` and `writes` (never the stack snapshots) gives:

- `rsp` per step and the stack region it points into;
- the kind of each instruction (`call`, `ret`, indirect `jmp`, `syscall`,
  other), from the dictionary of the `insn` column (or of the `kind` column
  of a format-2 trace), so each distinct value is read once however many
  times it ran;
- every memory write as flat numpy arrays (step, address, size), and the
  8-byte value each `call` pushed (not every write's value: only the calls'
  are ever asked for);
- every `ret`, with the slot it popped, where it landed, and who wrote that
  slot last: the `call` that pushed it (a return), an ordinary store (a
  **planted** return: a stack switch), or nothing (the sentinel the machine
  put under the entry function, or an uninitialised slot) — or, in a
  recording that began past the entry (`--from`), whatever the stack held
  when the trace began: a return address pushed before row 0.

The last writer of each slot is found without a Python loop over writes: the
writes are cut into the 8-byte words they touch, sorted by (word, step), and
each `ret`'s words are looked up with `searchsorted`. Memory is a few numpy
arrays of one entry per step or per write; register values other than
`rip`/`rsp` are read later, only at the steps that need them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..arch import PAGE, WORD
from ..layout import SENTINEL_RETURN, Region, slot_name
from ..symbols import LabelTable
from ..trace.arrays import arrow_indices, numpy_of
from ..trace.format import TraceMetadata
from ..trace.reader import Trace
from .kinds import (
    I16,
    I64,
    U8,
    U16,
    U64,
    B,
    Jumps,
    Kind,
    Origin,
    Returns,
    Steps,
    ThreadRuns,
    Writes,
)
from .memory import StepKinds, StepRsp, release_freed_memory
from .model import MAX_PLANTED, PlantedReturn
from .source import SourceLines
from .transfers import Transfers, classify

_T = TypeVar("_T", bound=np.generic)
#: Bytes under rsp a leaf function may use without moving rsp (System V x86-64).
RED_ZONE = 128
#: Elements per block where a whole-trace computation would need large temporaries.
_BLOCK = 1 << 20
#: Steps per block when finding the last writers: their sort keys are the pass's peak.
_WRITER_BLOCK = 1 << 18


#: The values of the trace's `kind` column (from capstone's detail mode when
#: recording; derived the same way on read for version 1 traces) that matter here.
_KIND_NAMES = {
    "call": Kind.CALL,
    "ret": Kind.RET,
    "indirect-jmp": Kind.JMP_INDIRECT,
    "syscall": Kind.SYSCALL,
}


@dataclass(frozen=True)
class StepInfo:
    step: int
    rip: int
    rsp: int
    symbol: str
    insn: str


class TraceFacts:
    """The trace, plus the stack events every invariant and plot starts from."""

    def __init__(
        self,
        trace: Trace,
        rsp: StepRsp,
        kind: StepKinds,
        writes: Writes,
        calls: I64,
        call_targets: U64,
        call_pushed: U64,
        returns: Returns,
        jumps: Jumps,
        threads: ThreadRuns | None = None,
    ) -> None:
        self.trace = trace
        #: Where OS threads took turns (none in a one-thread trace).
        self.threads = threads or ThreadRuns(np.zeros(0, np.int64), np.zeros(0, np.int64))
        self.meta: TraceMetadata = trace.metadata
        self.steps = int(rsp.size)
        #: rsp before each step, four bytes a step (`memory.StepRsp`): index it as an array.
        self.rsp = rsp
        self.kind = kind
        self.writes = writes
        self.calls = calls
        #: Where each call lands: rip after it.
        self.call_targets = call_targets
        #: What each call pushed: its step's first write when that is 8 bytes, else 0.
        self.call_pushed = call_pushed
        self.returns = returns
        self.jumps = jumps
        self.stacks: tuple[Region, ...] = self.meta.stacks
        self.final_rsp = int(self.meta.final.get("rsp", int(rsp[-1]) if rsp.size else 0))
        self.sentinel = int(self.meta.options.get("sentinel_return", SENTINEL_RETURN))
        #: `rsp_owner` with one more entry, step n: the final state's (`final_owner`).
        #: Read-only: one array shared by every user, never a per-caller copy.
        self.owners: I16 = np.empty(self.steps + 1, dtype=np.int16)
        stack_index(self.stacks, rsp, out=self.owners[:-1])
        outside = np.flatnonzero(self.owners[:-1] < 0)
        #: The stack each step's rsp is in (top included), -1 in none. While rsp never
        #: leaves the stacks, the same array as `rsp_owner` (a view: 2 bytes a step less).
        self.rsp_stack: I16 = self.owners[:-1].copy() if outside.size else self.owners[:-1]
        self._labels = LabelTable(self.meta.symbols)
        self._source_lines = SourceLines(self.meta)
        # The program's code, and a dynamic program's libraries' (libc.so.6 r-x...).
        self._code = tuple(r for r in self.meta.regions if r.kind == "code")
        counts = [
            int(trace.parquet.metadata.row_group(g).num_rows) for g in range(trace.num_row_groups)
        ]
        self._group_starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.owners[outside] = self.overflowed(rsp[outside])
        self.owners[-1] = self.final_owner
        self.owners.flags.writeable = False

    # --- names for addresses -------------------------------------------------

    def symbolize(self, addr: int) -> str:
        """`label` or `label+offset` for a code address; hex for anything else."""
        if addr == self.sentinel:
            return f"{addr:#x} (the entry's caller)"
        if not self.is_code(addr):
            return f"{addr:#x}"
        nearest = self._labels.nearest(addr)
        if nearest is None:
            return f"{addr:#x}"
        name, offset = nearest
        return name if offset == 0 else f"{name}+{offset}"

    def source(self, addr: int) -> str | None:
        """`file:line` of the instruction at `addr`, when the trace knows it."""
        return self._source_lines.text(addr)

    def function_start(self, addr: int) -> int:
        """The address of the label `addr` lies under (itself when it has none)."""
        nearest = self._labels.nearest(addr) if self.is_code(addr) else None
        return addr - nearest[1] if nearest is not None else addr

    def function_starts(self, addrs: U64) -> U64:
        """`function_start` for many addresses (each distinct one looked up once)."""
        unique, inverse = np.unique(addrs, return_inverse=True)
        starts = np.array([self.function_start(int(a)) for a in unique], dtype=np.uint64)
        out: U64 = starts[inverse.reshape(-1)] if unique.size else addrs.copy()
        return out

    def rips_at(self, steps: Steps) -> U64:
        """rip at each of `steps` (the final rip for a step equal to the trace's length)."""
        if not steps.size:
            return np.zeros(0, dtype=np.uint64)
        return self.registers_at(["rip"], steps.astype(np.int64))["rip"]

    def writes_rip(self, write: int) -> int:
        """rip of the instruction that made write number `write`."""
        step = int(self.writes.step[write])
        return int(self.rips_at(np.array([step], dtype=np.int64))[0])

    def write_value(self, write: int) -> int:
        """The value (little-endian, its first 8 bytes) of write number `write`, read
        from its row: the pass keeps no value per write, and only a few findings need
        one (the stack pointer a switch saved)."""
        step, addr = int(self.writes.step[write]), int(self.writes.addr[write])
        accesses = self.trace.slice(step, step + 1, ["writes"]).column("writes")[0].as_py()
        for access in accesses or []:
            if int(access["addr"]) == addr:
                return int.from_bytes(bytes(access["data"])[:WORD], "little")
        return 0

    def stack_name_at(self, step: int) -> str | None:
        """The stack rsp points into before `step` (after the last step: the final rsp)."""
        k = int(self.rsp_owner[step]) if step < self.steps else int(self.final_owner)
        return self.stacks[k].name if k >= 0 else None

    def is_code(self, addr: int) -> bool:
        return any(r.contains(addr) for r in self._code)

    def locate(self, addr: int) -> tuple[Region, int] | None:
        """The declared region holding `addr` and the byte index from its base."""
        region = self.meta.region_of(addr)
        return (region, addr - region.base) if region is not None else None

    def where(self, addr: int) -> str:
        """`region[index]` for an address in a region (the top of a stack included), else hex."""
        located = self.locate(addr)
        if located is not None:
            return slot_name(located[0].name, located[1])
        for stack in self.stacks:
            if addr == stack.top:
                return f"{slot_name(stack.name, stack.size)} (the top)"
        return f"{addr:#x}"

    def describe_value(self, value: int) -> str:
        """What a 64-bit value on the stack is: a code label, a stack slot, or a number."""
        if self.is_code(value) or value == self.sentinel:
            return self.symbolize(value)
        where = self.where(value)
        return f"{value:#x} (&{where})" if not where.startswith("0x") else f"{value:#x}"

    # --- planted returns and switches ------------------------------------------

    @cached_property
    def transfers(self) -> Transfers:
        """Every transfer that is not the ret of a matched call, classified by its landing."""
        return classify(self)

    @cached_property
    def planted_steps(self) -> I64:
        """Indices into `returns` of the rets that popped a planted address: planted in
        the trace (`PLANTED`) or before a `--from` trace began (`PLANTED_BEFORE`)."""
        return np.flatnonzero(self.returns.planted).astype(np.int64)

    @cached_property
    def planted_returns(self) -> tuple[PlantedReturn, ...]:
        """The first `MAX_PLANTED` planted returns, in step order (`planted_steps` has all)."""
        chosen = self.planted_steps[:MAX_PLANTED]
        r = self.returns
        ret_steps = r.step[chosen]
        # -1: planted before the trace began (no store in the trace)
        planted_steps = np.where(
            r.writer[chosen] >= 0, self.writes.step[np.clip(r.writer[chosen], 0, None)], -1
        )
        info = self.describe(
            np.concatenate([ret_steps, planted_steps[planted_steps >= 0]]).tolist()
        )
        transfers = self.transfers
        planted = []
        for k, i in enumerate(chosen.tolist()):
            slot = int(r.slot[i])
            located = self.locate(slot)
            store = info.get(int(planted_steps[k]))
            ret = info[int(r.step[i])]
            t = transfers.at_step(int(r.step[i]))
            landing = transfers.kind(t).label if t is not None else "other"
            planted.append(
                PlantedReturn(
                    ret_step=int(r.step[i]),
                    ret_symbol=info[int(r.step[i])].symbol,
                    region=located[0].name if located else None,
                    index=located[1] if located else slot,
                    slot=slot,
                    planted_step=store.step if store else None,
                    planted_insn=store.insn if store else "",
                    planted_symbol=store.symbol if store else "",
                    value=int(r.value[i]),
                    target=self.symbolize(int(r.value[i])),
                    entry_rsp=int(r.entry_rsp[i]),
                    trampoline=landing == "trampoline",
                    landing=landing,
                    source=self.source(ret.rip),
                    planted_source=self.source(store.rip) if store else None,
                )
            )
        return tuple(planted)

    def switch_steps(self) -> I64:
        """Steps whose instruction moved rsp from one stack to another (or out of every
        stack). Going below a stack's base is an overflow of it, not a switch."""
        if self.steps == 0:
            return np.zeros(0, dtype=np.int64)
        owner = self.owners
        switched = owner[1:] != owner[:-1]
        ends = self.threads.ends
        if ends.size:
            # Another thread's row follows: compare with where this thread runs next.
            # A thread's turn ending is the scheduler's switch, not a stack switch.
            switched[ends] = owner[self.threads.resumes] != owner[ends]
            switched[ends[self.threads.resumes >= self.steps]] = False
        return np.flatnonzero(switched).astype(np.int64)

    # --- stacks ---------------------------------------------------------------

    def stacks_used(self) -> tuple[Region, ...]:
        """The stack regions rsp pointed into or that were written, in declaration order."""
        used = set(np.unique(self.rsp_stack[self.rsp_stack >= 0]).tolist())
        write_stack = stack_index(self.stacks, self.writes.addr)
        used |= set(np.unique(write_stack[write_stack >= 0]).tolist())
        return tuple(s for i, s in enumerate(self.stacks) if i in used)

    def overflowed(self, addrs: U64) -> I16:
        """For each address just below a stack's base, the index in `stacks` of that
        stack (an overflow of it); -1 for anything else. "Just below" is above the
        region under the stack and no lower than the guard page under its pages."""
        bases, floor, stack_of = self._overflow_zones
        out = np.full(addrs.shape, -1, dtype=np.int16)
        for lo in range(0, addrs.size, _BLOCK):
            block = addrs[lo : lo + _BLOCK]
            pos = np.searchsorted(bases, block, side="right")
            out[lo : lo + _BLOCK] = np.where(block >= floor[pos], stack_of[pos], -1)
        return out

    @cached_property
    def _overflow_zones(self) -> tuple[U64, U64, I16]:
        """Regions' bases in order, the floor of the zone under each, its stack index."""
        regions = sorted(self.meta.regions, key=lambda r: r.base)
        bases = np.array([r.base for r in regions], dtype=np.uint64)
        floors = [max(r.map_start - PAGE, 0) for r in regions]
        for i in range(1, len(regions)):
            # A region below bounds the overflow; one the stack lies inside (the
            # heap around a stack from malloc) does not: running below such a
            # stack's base runs over its neighbours in that heap.
            below = [r.top for r in regions[:i] if r.top <= regions[i].base]
            if below:
                floors[i] = max(floors[i], max(below))
            if regions[i].kind == "stack" and self._nested(regions[i]):
                floors[i] = max(floors[i], self._nested_floor(regions[i], floors[i]))
        floor = np.array([*floors, 0], dtype=np.uint64)
        stack_of = np.array(
            [self.stacks.index(r) if r.kind == "stack" else -1 for r in regions] + [-1],
            dtype=np.int16,
        )
        return bases, floor, stack_of

    def _nested(self, stack: Region) -> bool:
        """Whether `stack` lies inside another region (a heap block used as a stack)."""
        return any(
            r is not stack and r.base <= stack.base and stack.top <= r.top
            for r in self.meta.regions
        )

    def _nested_floor(self, stack: Region, floor: int) -> int:
        """How far below a nested stack's base its overflow reaches: as deep as rsp
        went (less the 128-byte red zone a leaf function may write under rsp).
        The memory under such a stack belongs to its neighbours, and their own
        writes there are not an overflow of this stack."""
        lowest = stack.base
        for lo in range(0, self.rsp.size, _BLOCK):
            block = self.rsp[lo : lo + _BLOCK]
            under = block[(block >= np.uint64(floor)) & (block < np.uint64(stack.base))]
            if under.size:
                lowest = min(lowest, int(under.min()))
        return lowest - RED_ZONE if lowest < stack.base else stack.base

    @cached_property
    def rsp_owner(self) -> I16:
        """The stack each step's rsp belongs to, counting just below a stack's base
        (an overflow) as that stack; -1 elsewhere. Index into `stacks`."""
        return self.owners[:-1]

    @cached_property
    def final_owner(self) -> int:
        final = np.array([self.final_rsp], dtype=np.uint64)
        inside = int(stack_index(self.stacks, final)[0])
        return inside if inside >= 0 else int(self.overflowed(final)[0])

    def rsp_after(self, steps: I64) -> U64:
        """rsp after each of `steps` ran: the next row of its thread, or the final one
        after the last row."""
        nxt = self.threads.next_rows(steps)
        out = np.full(steps.shape, self.final_rsp, dtype=np.uint64)
        inside = nxt < self.steps
        out[inside] = self.rsp[nxt[inside]]
        return out

    def kind_at(self, steps: I64) -> U8:
        """Instruction kinds at `steps`; OTHER for a step past the end."""
        out = np.zeros(steps.shape, dtype=np.uint8)
        inside = (steps >= 0) & (steps < self.steps)
        out[inside] = self.kind[steps[inside]]
        return out

    # --- reading rows at a few steps ------------------------------------------

    def _groups_for(self, wanted: I64) -> Iterable[tuple[int, I64, I64]]:
        """(row group, positions into `wanted`, local row indices) for each group hit."""
        group_of = np.searchsorted(self._group_starts, wanted, side="right") - 1
        for g in np.unique(group_of).tolist():
            positions = np.flatnonzero(group_of == g)
            yield g, positions, wanted[positions] - self._group_starts[g]

    def describe(self, steps: Iterable[int]) -> dict[int, StepInfo]:
        """rip, rsp, symbol and instruction at each step, reading only the row groups needed."""
        wanted = np.unique(np.fromiter(steps, dtype=np.int64))
        wanted = wanted[(wanted >= 0) & (wanted < self.steps)]
        out: dict[int, StepInfo] = {}
        columns = ["rip", "rsp", "insn", "symbol"]
        for g, positions, local in self._groups_for(wanted):
            rows = self.trace.row_group(g, columns).take(arrow_indices(local)).to_pydict()
            for k, pos in enumerate(positions.tolist()):
                step = int(wanted[pos])
                out[step] = StepInfo(
                    step=step,
                    rip=int(rows["rip"][k]),
                    rsp=int(rows["rsp"][k]),
                    symbol=str(rows["symbol"][k]),
                    insn=str(rows["insn"][k]),
                )
        return out

    def registers_at(self, names: Sequence[str], steps: I64) -> dict[str, U64]:
        """Register values before each of `steps` (any order, repeats allowed); a step
        equal to the trace's length means the final state (after the last step).
        One pass over the row groups that hold any of the steps."""
        order = np.argsort(steps, kind="stable")
        ordered = steps[order]
        values = {name: np.empty(steps.shape, dtype=np.uint64) for name in names}
        end = int(np.searchsorted(ordered, self.steps))
        for name in names:
            values[name][order[end:]] = self.meta.final.get(name, 0)
        bounds = np.searchsorted(ordered[:end], self._group_starts)
        for g in range(self.trace.num_row_groups):
            lo, hi = int(bounds[g]), int(bounds[g + 1])
            if lo == hi:
                continue
            group = self.trace.row_group(g, list(names))
            local = ordered[lo:hi] - self._group_starts[g]
            for name in names:
                values[name][order[lo:hi]] = numpy_of(group.column(name))[local]
        return values


def stack_index(stacks: Sequence[Region], addrs: U64 | StepRsp, out: I16 | None = None) -> I16:
    """For each address, the index in `stacks` of the stack it lies in, with the top
    included (an empty stack's rsp is its top); -1 when in none. Into `out` if given."""
    order = sorted(range(len(stacks)), key=lambda i: stacks[i].base)
    bases = np.array([stacks[i].base for i in order], dtype=np.uint64)
    tops = np.array([stacks[i].top for i in order], dtype=np.uint64)
    if out is None:
        out = np.empty(addrs.shape, dtype=np.int16)
    out.fill(-1)
    if not order:
        return out
    ids = np.array(order, dtype=np.int16)
    # In blocks, so that the int64 temporaries stay small on a ten-million-step trace.
    for lo in range(0, addrs.size, _BLOCK):
        block = addrs[lo : lo + _BLOCK]
        pos = np.searchsorted(bases, block, side="right").astype(np.int64) - 1
        clipped = np.clip(pos, 0, len(order) - 1)
        inside = (pos >= 0) & (block <= tops[clipped])
        out[lo : lo + _BLOCK][inside] = ids[clipped[inside]]
    return out


def derive_facts(trace: Trace) -> TraceFacts:
    """Read the trace once (no snapshot columns) and derive its stack events."""
    n = trace.num_rows
    rsp = StepRsp.empty(n)
    kind = np.empty(n, dtype=np.uint8)
    # Per field of `Writes`, its pieces (one per row group), joined one field at a time.
    step_parts: list[I64] = []
    addr_parts: list[U64] = []
    size_parts: list[U16] = []
    pushed_parts: list[U64] = []
    # rip is kept only where a call or a ret lands (the next row's rip), not per step.
    landing_parts: list[U64] = []
    thread = np.empty(n, dtype=np.uint16)
    offset = 0
    for group in trace.iter_row_groups(["rip", "rsp", "kind", "writes", "thread"]):
        rows = group.num_rows
        rsp.fill(offset, numpy_of(group.column("rsp")))
        thread[offset : offset + rows] = numpy_of(group.column("thread"))
        kinds = _kinds(group.column("kind"))
        kind[offset : offset + rows] = kinds
        rip = numpy_of(group.column("rip"))
        if landing_parts and _is_transfer(kind[offset - 1]):
            landing_parts[-1][-1] = rip[0]  # the previous group ended on a call or ret
        transfer = np.flatnonzero(_is_transfer(kinds))
        # The last row's landing is the next group's first rip (patched above) or final.
        landed = rip[np.minimum(transfer + 1, rows - 1)]
        if transfer.size and transfer[-1] == rows - 1:
            landed[-1] = trace.metadata.final.get("rip", 0)
        landing_parts.append(landed.astype(np.uint64))
        call_rows = np.flatnonzero(kinds == Kind.CALL).astype(np.int64) + offset
        part = _writes(group.column("writes"), offset, call_rows)
        if part is not None:
            step_parts.append(part[0])
            addr_parts.append(part[1])
            size_parts.append(part[2])
            pushed_parts.append(part[3])
        else:
            pushed_parts.append(np.zeros(call_rows.shape, dtype=np.uint64))
        del part
        offset += rows

    # Each field's pieces go as soon as it is joined: never two copies of every write.
    # Write steps as 32-bit integers while the trace is shorter than 2**31 steps: the
    # write log is the pass's largest table (12 MB less at ten million steps).
    write_step: Steps = (
        np.concatenate(step_parts, dtype=np.int32, casting="unsafe")
        if step_parts and n < np.iinfo(np.int32).max
        else _concat(step_parts, np.int64)
    )
    step_parts.clear()
    write_addr = _concat(addr_parts, np.uint64)
    addr_parts.clear()
    write_size = _concat(size_parts, np.uint16)
    size_parts.clear()
    writes = Writes(step=write_step, addr=write_addr, size=write_size)
    del write_step, write_addr, write_size
    call_pushed = _concat(pushed_parts, np.uint64)
    del pushed_parts
    landings = _concat(landing_parts, np.uint64)
    del landing_parts
    # The row groups' pieces are joined and freed: their heap pages go back now,
    # before the last writers and the owners below make the pass's peak.
    release_freed_memory()
    runs = ThreadRuns.of(thread)
    del thread
    transfer_rows = np.flatnonzero(_is_transfer(kind))
    transfers = kind[transfer_rows]
    final_rsp = int(trace.metadata.final.get("rsp", 0))
    # A call or ret that was the last row of its thread's turn landed where that
    # thread ran next, not on the next row (another thread's).
    cut = runs.cut(transfer_rows)
    if cut.size:
        landings[cut] = _rips_at(trace, runs.next_rows(transfer_rows[cut]))
    del transfer_rows, cut

    calls = np.flatnonzero(kind == Kind.CALL).astype(np.int64)
    call_targets = landings[transfers == Kind.CALL]
    jumps = np.flatnonzero(kind == Kind.JMP_INDIRECT).astype(np.int64)
    jump_targets = landings[transfers == Kind.JMP_INDIRECT]
    ret_steps = np.flatnonzero(kind == Kind.RET).astype(np.int64)
    values = landings[transfers == Kind.RET]
    del landings, transfers
    slots = rsp[ret_steps]
    entry_rsp = np.full(ret_steps.shape, final_rsp, dtype=np.uint64)
    after_ret = runs.next_rows(ret_steps)
    before_end = after_ret < n
    entry_rsp[before_end] = rsp[after_ret[before_end]]
    # A thread that never ran again after its ret: the ret popped 8 bytes.
    never = (after_ret >= n) & (ret_steps + 1 < n)
    entry_rsp[never] = slots[never] + np.uint64(8)
    del after_ret, before_end, never  # the last writers below make the pass's peak
    writer = _last_writers(writes, slots, ret_steps, n)
    sentinel = int(trace.metadata.options.get("sentinel_return", SENTINEL_RETURN))
    origin = _origins(writes, kind, writer, slots, values, sentinel)
    if trace.metadata.start is not None and n:
        _held_before(origin, slots, values, int(rsp[0]), trace.metadata)
    returns = Returns(
        step=ret_steps,
        slot=slots,
        value=values,
        entry_rsp=entry_rsp,
        origin=origin,
        writer=writer,
    )
    # Kinds as the steps of each: the per-step array goes (10 MB at ten million steps).
    syscalls = np.flatnonzero(kind == Kind.SYSCALL).astype(np.int64)
    del kind
    step_kinds = StepKinds(
        n,
        {Kind.CALL: calls, Kind.RET: ret_steps, Kind.JMP_INDIRECT: jumps, Kind.SYSCALL: syscalls},
    )
    facts = TraceFacts(
        trace,
        rsp,
        step_kinds,
        writes,
        calls,
        call_targets,
        call_pushed,
        returns,
        Jumps(jumps, jump_targets),
        runs,
    )
    # And what the last writers and the owners freed.
    release_freed_memory()
    return facts


def _rips_at(trace: Trace, steps: I64) -> U64:
    """rip at a few steps (the final rip for the trace's length), row by row."""
    out = np.empty(steps.shape, dtype=np.uint64)
    final = int(trace.metadata.final.get("rip", 0))
    for i, step in enumerate(steps.tolist()):
        if step >= trace.num_rows:
            out[i] = final
        else:
            out[i] = trace.slice(step, step + 1, ["rip"]).column(0)[0].as_py()
    return out


def _is_transfer(kinds: U8 | np.uint8) -> B:
    """Calls, rets and indirect jumps: the instructions whose landing (the next rip)
    the analysis needs."""
    return np.asarray((kinds == Kind.CALL) | (kinds == Kind.RET) | (kinds == Kind.JMP_INDIRECT))


def _kinds(column: pa.ChunkedArray) -> U8:
    """Kinds per row from the `kind` column, each distinct value looked up once."""
    parts = []
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = pc.dictionary_encode(chunk)
        table = np.array(
            [_KIND_NAMES.get(str(v), Kind.OTHER) for v in chunk.dictionary.to_pylist()],
            dtype=np.uint8,
        )
        indices = numpy_of(chunk.indices)
        parts.append(table[indices] if table.size else np.zeros(len(chunk), dtype=np.uint8))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)


def _writes(
    column: pa.ChunkedArray, first_row: int, call_rows: I64
) -> tuple[I64, U64, U16, U64] | None:
    """Each write of a row group (its row, address and size), and what each call at
    `call_rows` pushed: its row's first write (writes are in row order) when that is
    8 bytes, else 0. Values are read for those writes only, not for every write."""
    lists = column.combine_chunks()
    flat = pc.list_flatten(lists)
    if len(flat) == 0:
        return None
    rows = numpy_of(pc.list_parent_indices(lists)).astype(np.int64) + first_row
    addr_array, size_array, data_array = flat.flatten()
    addr = numpy_of(addr_array).astype(np.uint64)
    size = numpy_of(size_array).astype(np.uint16)
    pushed = np.zeros(call_rows.shape, dtype=np.uint64)
    pos = np.minimum(np.searchsorted(rows, call_rows), rows.size - 1)
    found = rows[pos] == call_rows
    found[found] &= size[pos[found]] == 8
    if found.any():
        # The 8-byte values, straight from the binary column's buffers.
        buffers = data_array.buffers()
        offsets = np.frombuffer(buffers[1], dtype=np.int32)[
            data_array.offset : data_array.offset + len(data_array) + 1
        ]
        data = np.frombuffer(buffers[2], dtype=np.uint8)
        gather = offsets[pos[found]][:, None].astype(np.int64) + np.arange(8)
        pushed[found] = data[gather].astype(np.uint8).copy().view("<u8").reshape(-1)
    return rows, addr, size, pushed


def _concat(parts: list[npt.NDArray[_T]], dtype: type[_T]) -> npt.NDArray[_T]:
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)


def _last_writers(writes: Writes, slots: U64, ret_steps: I64, n: int) -> I64:
    """For each `ret`, the index of the last write before it that touched its slot, or -1.

    Writes and slots are cut into the 8-byte words they touch (an unaligned slot
    or a 16-byte store spans two); the last writer of a slot is the latest
    writer of any of its words. The trace is taken `_WRITER_BLOCK` steps at a time: the
    writes of a block are sorted by (word, step) and its rets looked up with
    `searchsorted`; a ret whose word was not written in its block gets the word's
    latest writer of the blocks before, carried over one entry per word. So the
    temporaries hold one block's writes, never every write of a long trace.
    """
    result = np.full(ret_steps.shape, -1, dtype=np.int64)
    if not len(writes) or not ret_steps.size:
        return result
    first_word = slots >> np.uint64(3)
    last_word = (slots + np.uint64(7)) >> np.uint64(3)
    ret_words = np.union1d(first_word, last_word)
    first_rank = np.searchsorted(ret_words, first_word).astype(np.int64)
    last_rank = np.searchsorted(ret_words, last_word).astype(np.int64)
    del first_word, last_word
    # Per ret word, its latest writer in the blocks done so far (-1: none yet).
    carried = np.full(ret_words.size, -1, dtype=np.int64)
    stride = np.int64(n + 1)
    bounds = np.arange(0, n + _WRITER_BLOCK, _WRITER_BLOCK, dtype=np.int64)
    write_at = np.searchsorted(writes.step, bounds)
    ret_at = np.searchsorted(ret_steps, bounds)
    for b in range(bounds.size - 1):
        r0, r1 = int(ret_at[b]), int(ret_at[b + 1])
        rank, owner = _words_written(writes, int(write_at[b]), int(write_at[b + 1]), ret_words)
        # One sortable key per (word, step): the word's rank among the ret words, then the step.
        key = rank * stride + writes.step[owner]
        order = np.argsort(key, kind="stable")
        key, owner, rank = key[order], owner[order], rank[order]
        del order
        if r1 > r0:
            sorted_writes = (key, rank, owner, stride)
            steps = ret_steps[r0:r1]
            first = _latest(sorted_writes, first_rank[r0:r1], steps, carried)
            second = _latest(sorted_writes, last_rank[r0:r1], steps, carried)
            step_of = np.where(first >= 0, writes.step[np.clip(first, 0, None)], -1)
            step_of_second = np.where(second >= 0, writes.step[np.clip(second, 0, None)], -1)
            result[r0:r1] = np.where(step_of_second > step_of, second, first)
        if owner.size:
            # The last entry of each word in (word, step) order is its latest writer.
            last_of_word = np.flatnonzero(np.append(rank[1:] != rank[:-1], True))
            carried[rank[last_of_word]] = owner[last_of_word]
    return result


def _latest(
    sorted_writes: tuple[I64, I64, I64, np.int64], query: I64, steps: I64, carried: I64
) -> I64:
    """For each ret word rank in `query`, its latest writer before the step in `steps`:
    from one block's writes sorted by (rank, step), else the one carried from before."""
    key, rank, owner, stride = sorted_writes
    if not owner.size:
        return carried[query]
    pos = np.searchsorted(key, query * stride + steps, side="left") - 1
    found = pos >= 0
    found[found] &= rank[pos[found]] == query[found]
    out: I64 = np.where(found, owner[np.clip(pos, 0, None)], carried[query])
    return out


def _words_written(writes: Writes, lo: int, hi: int, ret_words: U64) -> tuple[I64, I64]:
    """For writes `lo:hi`, one entry per (ret word touched, write): the word's rank in
    `ret_words` and the write's index, in write order."""
    addr = writes.addr[lo:hi]
    w_first = addr >> np.uint64(3)
    w_last = (addr + writes.size[lo:hi].astype(np.uint64) - np.uint64(1)) >> np.uint64(3)
    # Only writes that touch a word some ret reads matter: the first ret word at or
    # after a write's first word must not lie past its last word.
    nxt = np.searchsorted(ret_words, w_first)
    touches = nxt < ret_words.size
    touches[touches] = ret_words[nxt[touches]] <= w_last[touches]
    candidates = np.flatnonzero(touches).astype(np.int64)
    del nxt, touches
    w_first, w_last = w_first[candidates], w_last[candidates]
    spans = (w_last - w_first + np.uint64(1)).astype(np.int64)
    owner = np.repeat(candidates + lo, spans)
    starts = np.repeat(np.cumsum(spans) - spans, spans)
    word = np.repeat(w_first, spans) + (np.arange(owner.size) - starts).astype(np.uint64)
    del starts
    keep = np.isin(word, ret_words)
    word, owner = word[keep], owner[keep]
    return np.searchsorted(ret_words, word).astype(np.int64), owner


def _origins(writes: Writes, kind: U8, writer: I64, slots: U64, values: U64, sentinel: int) -> U8:
    has = writer >= 0
    w = np.clip(writer, 0, None)
    if len(writes):
        pushed_by_call = (
            has
            & (kind[writes.step[w]] == Kind.CALL)
            & (writes.addr[w] == slots)
            & (writes.size[w] == 8)
        )
    else:
        pushed_by_call = np.zeros(writer.shape, dtype=np.bool_)
    origin = np.full(writer.shape, Origin.PLANTED, dtype=np.uint8)
    origin[pushed_by_call] = Origin.CALL
    origin[~has] = np.where(values[~has] == np.uint64(sentinel), Origin.ENTRY, Origin.UNWRITTEN)
    return origin


def _held_before(origin: U8, slots: U64, values: U64, first_rsp: int, meta: TraceMetadata) -> None:
    """Mark, in a trace that began past the entry, the unwritten slots that were live
    stack at row 0 (at or above its rsp) and hold a code address: what a `call` before
    the trace pushed, as the whole recording would show. Changes `origin` in place."""
    unwritten = origin == Origin.UNWRITTEN
    stack = meta.region_of(first_rsp)
    live = slots >= np.uint64(first_rsp)
    if stack is not None:
        live &= slots < np.uint64(stack.top)
    in_code = np.zeros(values.shape, dtype=np.bool_)
    for region in meta.regions:
        if region.kind == "code":
            in_code |= (values >= np.uint64(region.base)) & (values < np.uint64(region.top))
    origin[unwritten & live & in_code] = Origin.BEFORE
    origin[unwritten & ~live & in_code] = Origin.PLANTED_BEFORE
