"""Provenance: who wrote a slot, and where the written value came from.

`provenance()` answers "which step last wrote this slot before step N?", then
follows the value back: a store `movq %rcx, 0x20(%rax)` wrote what rcx held,
so the next link is the last step before the store that changed rcx
(`movabsq $0x40003e, %rcx`), and so on through register moves, loads (whose
memory has a writer of its own) and pushes, until an immediate, a `call`, a
computation or the initial state ends the chain. What each instruction does
(a move, a pop, an `lea`, an immediate source) is decoded from its bytes
(`analysis.decoded`); its text is only shown.

`planted_returns()` finds every `ret` whose popped value was last written by
an ordinary store rather than pushed by a `call`: the stack switches. It goes
row group by row group with numpy, carrying per byte the last writer from
one group to the next.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from capstone import x86 as cs_x86

from ..analysis.decoded import (
    GENERAL_REGISTERS,
    Decoded,
    Operand,
    OperandType,
    decode,
)
from ..arch import REGISTERS, WORD
from ..errors import BadInput
from ..layout import SENTINEL_RETURN, Region, slot_name
from ..trace.arrays import numpy_of
from ..trace.format import overflow_key
from ..trace.reader import Trace
from .memory import AccessLog, flatten_accesses, memory_before
from .rows import (
    Instruction,
    StepRow,
    group_starts,
    instructions_at,
    mnemonic,
    row_at,
    text_mask,
)
from .telescope import describe_pointer

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
BoolArray = npt.NDArray[np.bool_]

#: How many links `provenance()` follows by default.
DEFAULT_DEPTH = 6


# --- naming slots -------------------------------------------------------------------


@dataclass(frozen=True)
class SlotRef:
    """A place in memory named by the user: `green[32]` (or the older `green:32`) or an address."""

    addr: int
    size: int
    region: Region | None

    @property
    def name(self) -> str:
        if self.region is None:
            return f"{self.addr:#x}"
        return slot_name(self.region.name, self.addr - self.region.base)


#: `green[32]`: a region's name and a byte index in brackets.
_BRACKETED = re.compile(r"(.+)\[\s*([^\]]+?)\s*\]")


def parse_slot(trace: Trace, text: str, size: int = WORD) -> SlotRef:
    """`REGION[INDEX]` (byte index from the region's base; `REGION:INDEX` as earlier
    versions spelled it is accepted too) or an address (0x hex or decimal)."""
    meta = trace.metadata
    bracketed = _BRACKETED.fullmatch(text.strip())
    if bracketed:
        name, colon, index_text = bracketed.group(1), ":", bracketed.group(2)
    else:
        name, colon, index_text = text.partition(":")
    if colon:
        try:
            region = meta.region(name)
        except KeyError:
            known = ", ".join(r.name for r in meta.regions)
            raise BadInput(f"{trace.path}: no region '{name}' (regions: {known})") from None
        try:
            index = int(index_text, 0)
        except ValueError:
            raise BadInput(f"{trace.path}: bad slot '{text}': the index must be a number") from None
        # Under the base too, as far as the trace stores what an overflow reached there
        # (`<stack>__below`, docs/trace-format.md): `calloc_48[-8]`, a heap chunk's header.
        below = meta.snapshots.get(overflow_key(region.name))
        lowest = below.base - region.base if below is not None else 0
        if not lowest <= index <= region.size - size:
            raise BadInput(
                f"{trace.path}: slot '{text}' is outside {region.name} "
                f"(indices {lowest} to {region.size - size} for {size} bytes)"
            )
        return SlotRef(region.base + index, size, region)
    try:
        addr = int(text, 0)
    except ValueError:
        raise BadInput(
            f"{trace.path}: bad slot '{text}': give REGION[INDEX] (e.g. green[32]) or an address"
        ) from None
    return SlotRef(addr, size, meta.region_of(addr))


# --- operands ---------------------------------------------------------------------------

#: Instructions that copy their source into the destination register as it is, or widened.
#: Not `movbe` (bytes swapped) nor `movmskps` (a computation), whose names also start `mov`.
_MOVES = frozenset(
    {
        cs_x86.X86_INS_MOV,
        cs_x86.X86_INS_MOVABS,
        cs_x86.X86_INS_MOVZX,
        cs_x86.X86_INS_MOVSX,
        cs_x86.X86_INS_MOVSXD,
        cs_x86.X86_INS_MOVD,
        cs_x86.X86_INS_MOVQ,
    }
)


def _decoded(row: StepRow) -> Decoded:
    return decode(row.rip, row.insn_bytes)


@dataclass(frozen=True)
class Flow:
    """What the chain needs to know of one instruction, decided from its bytes.

    The one place these rules live: `provenance()` follows them, and the
    stepper's chain follows the same facts, computed here for each
    instruction of its listing.
    """

    #: Where the value it stores or moves comes from: "imm" (the instruction
    #: itself), a general register (as a trace column), "mem" (the memory the
    #: step read first: a load, a pop) or None (nothing to follow).
    source: str | None
    #: The general register a move, a pop or an `lea` sets; None for any other instruction.
    dest: str | None = None
    #: "move": `dest` gets `source` as it is, or widened (a `pop` is a load from
    #: memory); "address": `lea`, `dest` computed from the base register in
    #: `source` (None for a rip-relative address); None when `dest` is None.
    how: str | None = None


def _source_of(operand: Operand | None) -> str | None:
    if operand is None:
        return None
    if operand.type is OperandType.IMM:
        return "imm"
    if operand.type is OperandType.REG and operand.register in GENERAL_REGISTERS:
        return operand.register
    return "mem"  # a memory operand, or a register the trace does not have


def flow(decoded: Decoded) -> Flow:
    """The `Flow` facts of an instruction."""
    source = _source_of(decoded.source)
    destination = decoded.destination
    register = (
        destination.register
        if destination is not None
        and destination.type is OperandType.REG
        and destination.register in GENERAL_REGISTERS
        else None
    )
    if register is not None and decoded.id in _MOVES and len(decoded.operands) == 2:
        return Flow(source, register, "move")
    if register is not None and decoded.id == cs_x86.X86_INS_LEA and decoded.source is not None:
        base = decoded.source.base
        return Flow(base if base in GENERAL_REGISTERS else None, register, "address")
    popped = decoded.source
    if (
        decoded.id == cs_x86.X86_INS_POP
        and popped is not None
        and popped.type is OperandType.REG
        and popped.register in GENERAL_REGISTERS
    ):
        return Flow("mem", popped.register, "move")
    return Flow(source)


# --- the chain --------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """One step back in a value's history."""

    kind: str  # store | push-return | register | load | immediate | computed | initial | stop
    step: int | None
    instruction: Instruction | None
    what: str  # the slot or register this link is about: `green[32]`, `rcx`
    value: int
    note: str  # one sentence saying what happened


@dataclass(frozen=True)
class Provenance:
    slot: SlotRef
    before: int  # the question is about memory before this step
    value: int
    pointer: str  # what the value points to, if anything
    chain: tuple[Link, ...]
    #: Other steps that wrote some of the slot's bytes (when the last write was partial).
    partial_writers: tuple[int, ...]


def last_register_change(trace: Trace, register: str, before: int) -> int | None:
    """The last step `s < before` whose instruction changed `register` (row s+1 differs from s).

    Reads the register column backwards one row group at a time, so a value
    set just before the question costs one row group.
    """
    if register not in REGISTERS:
        raise ValueError(register)
    starts = group_starts(trace)
    final = np.array([trace.metadata.final.get(register, 0)], dtype=np.uint64)
    later: npt.NDArray[np.uint64] = final  # the value just after the segment being read
    last_group = int(np.searchsorted(starts, min(before, trace.num_rows - 1), side="right")) - 1
    for group in range(last_group, -1, -1):
        values = numpy_of(trace.row_group(group, [register]).column(0))
        end = min(int(starts[group + 1]), before + 1) - int(starts[group])
        segment = values[:end]
        if int(starts[group]) + end == int(starts[group + 1]):
            segment = np.concatenate([segment, later])  # row `before` may open the next group
        changed = np.flatnonzero(segment[1:] != segment[:-1])
        changed = changed[int(starts[group]) + changed < before]
        if len(changed):
            return int(starts[group]) + int(changed[-1])
        later = values[:1]
    return None


def _describe_slot(trace: Trace, addr: int) -> str:
    pointed = describe_pointer(trace.metadata, addr)
    return pointed if "[" in pointed else f"{addr:#x}"


def _memory_links(
    trace: Trace, addr: int, size: int, before: int, depth: int
) -> tuple[list[Link], int, tuple[int, ...]]:
    """Links explaining memory `addr ..< addr+size` before `before`, its value, other writers."""
    history = memory_before(trace, addr, addr + size, before)
    value = int.from_bytes(history.values.tobytes(), "little")
    what = _describe_slot(trace, addr)
    writers = sorted({int(w) for w in history.writers if w >= 0}, reverse=True)
    if not writers:
        if value == SENTINEL_RETURN:
            note = "never written by the program: the sentinel return address the machine planted"
        elif trace.metadata.start is not None:
            # A `--from` trace: the memory is as the run left it when the trace began.
            note = (
                f"not written since the trace began (--from {trace.metadata.start.symbol}): "
                "what the run before it left there"
            )
        else:
            note = "never written by the program: initial memory"
        return [Link("initial", None, None, what, value, note)], value, ()
    step = writers[0]
    row = row_at(trace, step)
    instruction = Instruction(row.rip, row.insn, row.symbol)
    if row.kind == "call":
        note = f"pushed by the call at step {step}: a return address, not planted"
        return (
            [Link("push-return", step, instruction, what, value, note)],
            value,
            tuple(writers[1:]),
        )
    link = Link(
        "store",
        step,
        instruction,
        what,
        value,
        f"written at step {step} by `{mnemonic(row.insn)}`, an ordinary store",
    )
    links = [link]
    if depth > 1:
        decoded = _decoded(row)
        links += _operand_links(trace, row, decoded, flow(decoded).source, depth - 1)
    return links, value, tuple(writers[1:])


def _operand_links(
    trace: Trace, row: StepRow, decoded: Decoded, source: str | None, depth: int
) -> list[Link]:
    """Links explaining where the value an instruction took from `source` (a `Flow.source`)
    came from."""
    text = decoded.source.text if decoded.source is not None else ""
    if source is None:
        return [Link("stop", None, None, "", 0, f"cannot follow the source of `{row.insn}`")]
    if source == "imm":
        imm = decoded.source.imm if decoded.source is not None else 0
        return [
            Link(
                "immediate",
                row.step,
                Instruction(row.rip, row.insn, row.symbol),
                text or f"${imm:#x}",
                0,
                "an immediate in the instruction itself",
            )
        ]
    if source in GENERAL_REGISTERS:
        return _register_links(trace, source, row.step, depth)
    if row.reads:
        read = row.reads[0]
        links, _, _ = _memory_links(trace, read.addr, read.size, row.step, depth)
        return links
    return [Link("stop", None, None, text, 0, f"cannot follow the source of `{row.insn}`")]


def _register_links(trace: Trace, register: str, before: int, depth: int) -> list[Link]:
    step = last_register_change(trace, register, before)
    value = row_at(trace, before).registers[register] if before < trace.num_rows else 0
    if step is None:
        note = f"{register} was never changed before step {before}: its initial value"
        return [Link("initial", None, None, register, value, note)]
    row = row_at(trace, step)
    instruction = Instruction(row.rip, row.insn, row.symbol)
    decoded = _decoded(row)
    facts = flow(decoded)
    into_register = facts.dest == register
    if into_register and facts.how == "move" and facts.source == "imm":
        return [
            Link(
                "immediate",
                step,
                instruction,
                register,
                value,
                f"{register} was set at step {step} from an immediate",
            )
        ]
    if into_register and facts.how == "move":
        # A plain move into the register, or a pop: follow its source (a register or memory).
        popped = decoded.id == cs_x86.X86_INS_POP
        kind = "load" if row.reads else "register"
        note = f"{register} was {'popped' if popped else 'set'} at step {step}"
        link = Link(
            kind, step, instruction, register, value, note + ("" if popped else " by a move")
        )
        tail = _operand_links(trace, row, decoded, facts.source, depth - 1) if depth > 1 else []
        return [link, *tail]
    if into_register and facts.how == "address" and depth > 1:
        # A rip-relative address is a constant of the code: no register to follow.
        where = decoded.source.text if decoded.source is not None else ""
        link = Link(
            "computed",
            step,
            instruction,
            register,
            value,
            f"{register} was computed at step {step} as the address {where}",
        )
        base = facts.source
        return [link, *(_register_links(trace, base, step, depth - 1) if base else [])]
    return [
        Link(
            "computed",
            step,
            instruction,
            register,
            value,
            f"{register} was last changed at step {step}",
        )
    ]


def provenance(trace: Trace, slot: SlotRef, before: int, depth: int = DEFAULT_DEPTH) -> Provenance:
    """Who wrote `slot` last before the instruction at `before` ran, followed `depth` links back."""
    if not 0 <= before <= trace.num_rows:
        raise BadInput(
            f"{trace.path}: no step {before}: the trace has steps 0 to {trace.num_rows - 1}"
        )
    links, value, partial = _memory_links(trace, slot.addr, slot.size, before, max(depth, 1))
    return Provenance(
        slot=slot,
        before=before,
        value=value,
        pointer=describe_pointer(trace.metadata, value),
        chain=tuple(links),
        partial_writers=partial,
    )


# --- planted returns ----------------------------------------------------------------


@dataclass(frozen=True)
class PlantedReturn:
    """A `ret` that popped an address an ordinary store wrote: a stack switch."""

    ret_step: int
    slot_addr: int
    stack: str | None  # the region the slot is in
    index: int | None  # the slot's byte index from that region's base
    target: int  # the popped address
    target_symbol: str
    planted_step: int  # the store that wrote it
    planted_by: Instruction | None


class _LastWriters:
    """Per byte address: the step that last wrote it and whether that was a `call`.

    Kept as sorted numpy arrays so that merging a row group's writes is a sort,
    not a Python loop.
    """

    def __init__(self) -> None:
        self.keys: U64 = np.zeros(0, dtype=np.uint64)
        self.steps: I64 = np.zeros(0, dtype=np.int64)
        self.by_call: BoolArray = np.zeros(0, dtype=bool)

    def lookup(self, keys: U64) -> tuple[I64, BoolArray]:
        """(last writing step or -1, whether that was a call) per byte address in `keys`."""
        steps = np.full(len(keys), -1, dtype=np.int64)
        calls = np.zeros(len(keys), dtype=bool)
        if len(self.keys) == 0:
            return steps, calls
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = self.keys[at] == keys
        steps[found] = self.steps[at[found]]
        calls[found] = self.by_call[at[found]]
        return steps, calls

    def merge(self, keys: U64, steps: I64, by_call: BoolArray) -> None:
        all_keys = np.concatenate([self.keys, keys])
        all_steps = np.concatenate([self.steps, steps])
        all_calls = np.concatenate([self.by_call, by_call])
        order = np.lexsort((all_steps, all_keys))
        ordered = all_keys[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = ordered[1:] != ordered[:-1]
        chosen = order[last]
        self.keys, self.steps, self.by_call = all_keys[chosen], all_steps[chosen], all_calls[chosen]


def _byte_events(log: AccessLog, entries: I64, width: I64) -> tuple[U64, I64]:
    """Expand entries into one (byte address, entry) pair per byte of `width`."""
    if len(entries) == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    k = np.arange(int(width.max()), dtype=np.uint64)
    valid = k[None, :] < width[:, None].astype(np.uint64)
    keys = (log.addr[entries][:, None] + k[None, :])[valid]
    owner = np.broadcast_to(entries[:, None], valid.shape)[valid]
    return keys, owner


def _scan_planted(trace: Trace) -> Iterator[tuple[int, int, int, int]]:
    """(ret step, slot address, popped value, planting step) per planted `ret`, in step order."""
    writers = _LastWriters()
    columns = ["step", "kind", "reads", "writes"]
    for index in range(trace.num_row_groups):
        group = trace.row_group(index, columns)
        kind = group.column("kind")
        calls = text_mask(kind, lambda k: k == "call")
        rets = text_mask(kind, lambda k: k == "ret")
        writes = flatten_accesses(group, "writes")
        reads = flatten_accesses(group, "reads")

        # The first read of each ret row is the popped slot.
        ret_entries = np.flatnonzero(rets[reads.row])
        if len(ret_entries):
            first = np.ones(len(ret_entries), dtype=bool)
            first[1:] = reads.row[ret_entries][1:] != reads.row[ret_entries][:-1]
            ret_entries = ret_entries[first]
        w_keys, w_owner = _byte_events(writes, np.arange(len(writes), dtype=np.int64), writes.size)
        r_keys, r_owner = _byte_events(
            reads, ret_entries, np.full(len(ret_entries), WORD, dtype=np.int64)
        )
        if len(ret_entries):
            # Merge reads and writes by (byte, step, reads before writes of the same step);
            # the last write at or before each read, on the same byte, is its writer.
            keys = np.concatenate([r_keys, w_keys])
            steps = np.concatenate([reads.step[r_owner], writes.step[w_owner]])
            is_write = np.concatenate([np.zeros(len(r_keys), bool), np.ones(len(w_keys), bool)])
            order = np.lexsort((is_write, steps, keys))
            positions = np.where(is_write[order], np.arange(len(order)), -1)
            last_write = np.maximum.accumulate(positions)
            clipped = np.maximum(last_write, 0)
            same_byte = (last_write >= 0) & (keys[order][clipped] == keys[order])
            read_at = np.flatnonzero(~is_write[order])
            source = order[read_at]  # index into the concatenation; reads come first
            writer_index = order[clipped[read_at]] - len(r_keys)
            in_group = same_byte[read_at]
            byte_step = np.full(len(r_keys), -1, dtype=np.int64)
            byte_call = np.zeros(len(r_keys), dtype=bool)
            byte_step[source[in_group]] = writes.step[w_owner[writer_index[in_group]]]
            byte_call[source[in_group]] = calls[writes.row[w_owner[writer_index[in_group]]]]
            missing = np.flatnonzero(byte_step < 0)
            if len(missing):
                old_steps, old_calls = writers.lookup(r_keys[missing])
                byte_step[missing] = old_steps
                byte_call[missing] = old_calls
            per_ret_step = byte_step.reshape(-1, WORD)
            per_ret_call = byte_call.reshape(-1, WORD)
            latest = per_ret_step.argmax(axis=1)
            rows = np.arange(len(ret_entries))
            planter = per_ret_step[rows, latest]
            planted = (planter >= 0) & ~per_ret_call[rows, latest]
            for i in np.flatnonzero(planted).tolist():
                entry = int(ret_entries[i])
                value = int.from_bytes(reads.bytes_of(entry)[:WORD], "little")
                yield int(reads.step[entry]), int(reads.addr[entry]), value, int(planter[i])
        if len(w_keys):
            writers.merge(w_keys, writes.step[w_owner], calls[writes.row[w_owner]])


def planted_returns(trace: Trace, limit: int | None = None) -> list[PlantedReturn]:
    """The `ret`s that popped a planted address, in step order (the first `limit` of them)."""
    found: list[tuple[int, int, int, int]] = []
    for item in _scan_planted(trace):
        found.append(item)
        if limit is not None and len(found) >= limit:
            break
    planters = instructions_at(trace, [p for *_, p in found])
    meta = trace.metadata
    out = []
    for ret_step, addr, value, planted_step in found:
        region = meta.region_of(addr)
        out.append(
            PlantedReturn(
                ret_step=ret_step,
                slot_addr=addr,
                stack=region.name if region else None,
                index=addr - region.base if region else None,
                target=value,
                target_symbol=describe_pointer(meta, value),
                planted_step=planted_step,
                planted_by=planters.get(planted_step),
            )
        )
    return out
