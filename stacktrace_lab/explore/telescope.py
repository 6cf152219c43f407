"""The stack telescope: a stack region as 8-byte slots at one step, like a debugger shows it.

Each slot has its byte index from the region's base, its address, its value
(from the `stack__` snapshot where the trace keeps one, else rebuilt from the
write log), what the value points to (`hello+0`, `green[32]`) and the step
that last wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import WORD
from ..layout import SENTINEL_RETURN, Region
from ..symbols import LabelTable
from ..trace.format import TraceMetadata, overflow_key
from ..trace.reader import Trace
from .memory import memory_before, snapshot_before
from .rows import Instruction, check_step, instructions_at, row_at

#: A region of at most this many slots is shown whole; a larger one around rsp.
WHOLE_REGION_SLOTS = 64
#: Around rsp in a large region: slots below rsp (free space) and from rsp up (live frames).
SLOTS_BELOW_RSP = 4
SLOTS_FROM_RSP = 16


@dataclass(frozen=True)
class Slot:
    index: int  # byte offset of the slot from the region's base
    addr: int
    size: int  # 8, or fewer for a partial slot at a region's unaligned base
    value: int
    points_to: str  # `label+off`, `stack[index]`, or "" for a plain number
    written_at: int | None  # the step that last wrote a byte of it; None: never written
    writer: Instruction | None  # the instruction at `written_at`

    def holds(self, addr: int) -> bool:
        return self.addr <= addr < self.addr + self.size


@dataclass(frozen=True)
class Telescope:
    region: Region
    step: int
    rsp: int
    slots: tuple[Slot, ...]
    whole: bool  # every slot of the region is shown

    def slot_at_index(self, index: int) -> Slot | None:
        return next((s for s in self.slots if s.index == index), None)


def describe_pointer(meta: TraceMetadata, value: int) -> str:
    """What `value` points to: a code label, a slot of a stack or data region, or ""."""
    if value == SENTINEL_RETURN:
        return "sentinel return"
    for region in meta.regions:
        inside = region.base <= value < region.top or (
            region.kind == "stack" and value == region.top  # an empty stack's rsp
        )
        if not inside:
            continue
        if region.kind != "code":
            return f"{region.name}[{value - region.base}]"
        nearest = LabelTable(meta.symbols).nearest(value)
        if nearest is None:
            return f"code+{value - region.base}"
        name, offset = nearest
        return f"{name}+{offset}"
    return ""


def active_stack(meta: TraceMetadata, rsp: int) -> Region | None:
    """The stack region rsp is in (`base <= rsp <= top`: at the top is an empty stack)."""
    for region in meta.stacks:
        if region.base <= rsp <= region.top:
            return region
    return None


def overflowed_stack(meta: TraceMetadata, rsp: int) -> tuple[Region, int] | None:
    """(stack, lowest address stored) when rsp is under a stack's base, inside the bytes
    the trace stores of that stack's overflow (`<stack>__below`, docs/trace-format.md)."""
    for region in meta.stacks:
        below = meta.snapshots.get(overflow_key(region.name))
        if below is not None and below.base <= rsp < region.base:
            return region, below.base
    return None


def slot_span(region: Region, rsp: int, around_rsp: bool) -> tuple[int, int]:
    """The byte range (lo, hi) of the slots to show, 8-byte aligned within the region."""
    first = region.base - region.base % WORD
    last = region.top + (-region.top) % WORD
    if not around_rsp and (last - first) // WORD <= WHOLE_REGION_SLOTS:
        return region.base, region.top
    at = rsp - rsp % WORD
    lo = max(at - SLOTS_BELOW_RSP * WORD, first)
    hi = min(at + SLOTS_FROM_RSP * WORD, last)
    return max(lo, region.base), min(hi, region.top)


def telescope(
    trace: Trace, step: int, region: Region | None = None, around_rsp: bool = False
) -> Telescope | None:
    """The slots of `region` (default: the stack rsp is in) before the instruction at `step`.

    None when no region is given and rsp is in no stack region, nor under a stack's
    base where the trace stores that stack's overflow.
    """
    meta = trace.metadata
    check_step(trace, step)
    rsp = row_at(trace, step).rsp
    region = region or active_stack(meta, rsp)
    overflow = overflowed_stack(meta, rsp) if region is None else None
    if overflow is not None:
        # rsp ran off a stack through its base: the slots around it, under the base
        # (negative indexes) up into the stack, as far down as the trace stores them.
        region, floor = overflow
        at = rsp - rsp % WORD
        lo = max(at - SLOTS_BELOW_RSP * WORD, floor)
        hi = min(at + SLOTS_FROM_RSP * WORD, region.top)
    elif region is None:
        return None
    else:
        lo, hi = slot_span(region, rsp, around_rsp)
    history = memory_before(trace, lo, hi, step)
    values = bytearray(history.values.tobytes())
    for key in (region.name, overflow_key(region.name)):
        snapshot = snapshot_before(trace, key, step)
        if snapshot is None:
            continue
        base, data = snapshot
        first, last = max(lo, base), min(hi, base + len(data))
        if first < last:
            values[first - lo : last - lo] = data[first - base : last - base]
    bounds = []
    addr = lo
    while addr < hi:
        end = min(addr - addr % WORD + WORD, hi)
        bounds.append((addr, end))
        addr = end
    writer_steps: list[int | None] = []
    for start, end in bounds:
        latest = int(history.writers[start - lo : end - lo].max())
        writer_steps.append(latest if latest >= 0 else None)
    writers = instructions_at(trace, [s for s in writer_steps if s is not None])
    slots = []
    for (start, end), written in zip(bounds, writer_steps, strict=True):
        value = int.from_bytes(values[start - lo : end - lo], "little")
        slots.append(
            Slot(
                index=start - region.base,
                addr=start,
                size=end - start,
                value=value,
                points_to=describe_pointer(meta, value),
                written_at=written,
                writer=writers.get(written) if written is not None else None,
            )
        )
    whole = lo == region.base and hi == region.top
    return Telescope(region=region, step=step, rsp=rsp, slots=tuple(slots), whole=whole)
