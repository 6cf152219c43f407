"""Stacks found, not declared: a cheap pass over a real program before recording it.

A stack switch is rsp moving into another region. The discovery pass runs the
program once with a light hook (rsp only, one register read per step) and
hooks on the allocator (malloc, calloc, realloc, free, when the binary has
them), collecting every rsp outside the process stack. Each such rsp starts
a stack unless it lies in, or just under, one found before (going below a
stack's base is an overflow of it, not a new stack). A new stack is named
and bounded from the best evidence, in this order:

1. an ELF data symbol covering it (a `static` array: the symbol's name);
2. the allocation it lies in (`calloc_48`: the allocator and the size asked);
3. an anonymous mmap (`mmap_<size>`), or the sigaltstack (`sigaltstack`);
4. the malloc chunk it lies in, from the heap's chunk headers (`chunk_56`);
5. else the range rsp visited there (`stack_<address>`).

Emulation is deterministic, so the recording pass sees the same addresses.
"""

from __future__ import annotations

import contextlib
import ctypes
from array import array
from dataclasses import dataclass, field
from typing import Any

import unicorn.x86_const as x86
from unicorn import UC_HOOK_CODE
from unicorn.unicorn_py3.unicorn import UcError

from ..layout import Region
from .elf import DataSymbol, ElfImage
from .machine import Machine, _raw
from .naming import PROCESS_STACK, identifier, unique, usable_part
from .syscalls import LinuxKernel

#: How far below a found stack's base rsp may go and still be that stack (an overflow).
OVERFLOW_REACH = 64 << 10
#: A move of rsp by more than this (or from another stack) is a switch, not a push.
SWITCH_JUMP = 4096
HEAP_SNAPSHOTS = 64
_ALLOCATORS = ("malloc", "calloc", "realloc", "free")
_JMP_SELF = (b"\xeb\xfe", b"\xe9\xfb\xff\xff\xff")


@dataclass(frozen=True)
class Allocation:
    step: int  # when it returned
    kind: str  # malloc, calloc, realloc
    addr: int
    size: int
    freed: int | None = None  # the step free() was called on it


@dataclass
class Evidence:
    """What the discovery pass saw."""

    outside: list[tuple[int, int]] = field(default_factory=list)  # (step, rsp)
    allocations: list[Allocation] = field(default_factory=list)
    mmaps: list[tuple[int, int]] = field(default_factory=list)  # (addr, length)
    sigaltstack: tuple[int, int] | None = None
    steps: int = 0
    #: The lowest rsp inside the process stack (-1: rsp never was there).
    lowest_main: int = -1
    #: The heap's bytes when rsp left the process stack, by step (the first
    #: `HEAP_SNAPSHOTS` times): its chunk headers, before an overflow clobbers them.
    heaps: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    #: Where the heap grew from, each time: where an allocator's blocks may start.
    heap_starts: list[int] = field(default_factory=list)
    #: Memory mapped with no access at the end (guard pages): [start, end).
    no_access: list[tuple[int, int]] = field(default_factory=list)


def run_discovery(
    machine: Machine, image: ElfImage, main_stack: Region, max_steps: int
) -> Evidence:
    """Run `machine` (already fast-forwarded to the start, if any) and collect the evidence."""
    uc = machine.uc
    uch = uc._uch
    evidence = Evidence()
    outside_steps = array("q")
    outside_rsp = array("Q")
    lo, hi = main_stack.base, main_stack.top
    rsp_value = ctypes.c_uint64()
    rsp_ref = ctypes.byref(rsp_value)
    reg_read = _raw.uc_reg_read
    rsp_id = ctypes.c_int(x86.UC_X86_REG_RSP)
    allocator_at = {
        addr: name for name in _ALLOCATORS if (addr := image.raw_symbols.get(name)) is not None
    }
    pending: list[tuple[str, int, int, int]] = []  # (kind, return address, rsp at entry, size)
    live: dict[int, int] = {}  # address -> index in allocations
    state = {"step": 0, "previous": -1, "want": -1, "lowest": hi}

    def on_code(_uc: Any, address: int, _size: int, _user: Any) -> None:
        step = state["step"]
        if step >= max_steps:
            uc.emu_stop()
            return
        reg_read(uch, rsp_id, rsp_ref)
        rsp = rsp_value.value
        if not lo <= rsp <= hi:
            if (not outside_steps or outside_steps[-1] != step - 1) and len(
                evidence.heaps
            ) < HEAP_SNAPSHOTS:
                evidence.heaps[step] = _heap_now()
            outside_steps.append(step)
            outside_rsp.append(rsp)
        elif rsp < state["lowest"]:
            state["lowest"] = rsp
        if address == state["want"]:
            _returned(rsp)
        elif address in allocator_at:
            _entered(allocator_at[address], rsp)
        if address == state["previous"] and bytes(uc.mem_read(address, 2)) == _JMP_SELF[0]:
            uc.emu_stop()
            return
        state["previous"] = address
        state["step"] = step + 1

    def _heap_now() -> tuple[int, bytes]:
        kernel = machine.kernel
        if not isinstance(kernel, LinuxKernel) or kernel.process.brk <= kernel.process.brk_start:
            return (0, b"")
        start = kernel.process.brk_start
        return start, machine.read_or_zero(start, kernel.process.brk - start)

    def _entered(kind: str, rsp: int) -> None:
        rdi = uc.reg_read(x86.UC_X86_REG_RDI)
        rsi = uc.reg_read(x86.UC_X86_REG_RSI)
        if kind == "free":
            index = live.pop(rdi, None)
            if index is not None:
                old = evidence.allocations[index]
                evidence.allocations[index] = Allocation(
                    old.step, old.kind, old.addr, old.size, state["step"]
                )
            return
        size = {"malloc": rdi, "calloc": rdi * rsi, "realloc": rsi}[kind]
        ret = int.from_bytes(uc.mem_read(rsp, 8), "little")
        pending.append((kind, ret, rsp, size))
        state["want"] = ret

    def _returned(rsp: int) -> None:
        while pending and pending[-1][2] + 8 != rsp:
            if pending[-1][2] + 8 < rsp:
                pending.pop()  # left by a longjmp: forget it
            else:
                return  # a recursive return to the same place, deeper
        if not pending:
            return
        kind, _ret, _entry, size = pending.pop()
        addr = uc.reg_read(x86.UC_X86_REG_RAX)
        if addr:
            live[addr] = len(evidence.allocations)
            evidence.allocations.append(Allocation(state["step"], kind, addr, size))
        state["want"] = pending[-1][1] if pending else -1

    uc.hook_add(UC_HOOK_CODE, on_code)
    with contextlib.suppress(UcError):  # a fault ends the pass as it ends the recording
        uc.emu_start(int(uc.reg_read(x86.UC_X86_REG_RIP)), 0)
    evidence.outside = list(zip(outside_steps.tolist(), outside_rsp.tolist(), strict=True))
    evidence.steps = state["step"]
    evidence.lowest_main = state["lowest"]
    kernel = machine.kernel
    if isinstance(kernel, LinuxKernel):
        evidence.mmaps = list(kernel.process.mmaps)
        evidence.sigaltstack = kernel.process.sigaltstack
        evidence.heap_starts = list(kernel.process.brk_starts)
    evidence.no_access = [(begin, last + 1) for begin, last, perms in uc.mem_regions() if not perms]
    return evidence


def name_stacks(evidence: Evidence, data_symbols: tuple[DataSymbol, ...]) -> list[Region]:
    """The stacks the evidence shows, in the order rsp first reached them."""
    stacks: list[Region] = []
    visits: dict[int, list[int]] = {}  # index of a range-only stack -> rsp values
    names: set[str] = {PROCESS_STACK}
    previous = (-2, 0)
    for step, rsp in evidence.outside:
        # rsp got here by a switch (from another stack, or a jump of more than a page),
        # not by pushing down from where it was: an overflow descends, a switch jumps.
        jumped = step != previous[0] + 1 or abs(rsp - previous[1]) > SWITCH_JUMP
        previous = (step, rsp)
        # Known bounds: in or just under (a stack rsp is in first, then one it is under).
        # Only the range visited: near it either way.
        near = [
            k
            for k, s in enumerate(stacks)
            if s.base - OVERFLOW_REACH <= rsp <= s.top + (OVERFLOW_REACH if k in visits else 0)
        ]
        owner = next((k for k in near if stacks[k].base <= rsp), near[0] if near else None)
        found = None
        if owner is not None and jumped and rsp < stacks[owner].base:
            # Just under a stack, but a switch into a block of its own (the next
            # thread's stack, mapped right below): a new stack, not an overflow.
            found = _evidence_for(rsp, step, evidence, data_symbols, strong_only=True)
            if found is not None and found[1] != stacks[owner].base:
                owner = None
        if owner is not None:
            if owner in visits:
                visits[owner].append(rsp)
            continue
        found = found or _evidence_for(rsp, step, evidence, data_symbols)
        if found is None:
            visits[len(stacks)] = [rsp]
            found = (f"stack_{rsp:x}", rsp, 0)
        name, base, size = found
        stacks.append(Region(unique(name, names), "stack", base, max(size, 1), "rw-"))
    for k, values in visits.items():  # a range rsp visited: from its lowest to its highest
        low = min(values) // 16 * 16
        high = (max(values) + 8 + 15) // 16 * 16
        stacks[k] = Region(stacks[k].name, "stack", low, high - low, "rw-")
    return stacks


def _evidence_for(
    rsp: int,
    step: int,
    evidence: Evidence,
    data_symbols: tuple[DataSymbol, ...],
    strong_only: bool = False,
) -> tuple[str, int, int] | None:
    """(name, base, size) of the block `rsp` lies in, by the best evidence; with
    `strong_only`, only a symbol, a live allocation or a mapping (not a heap chunk read
    from headers, which an overflow runs over as often as a stack lives in one)."""
    for sym in data_symbols:
        if sym.addr <= rsp <= sym.addr + sym.size:
            return identifier(sym.name), sym.addr, sym.size
    for alloc in reversed(evidence.allocations):
        alive = alloc.step <= step and (alloc.freed is None or step < alloc.freed)
        if alive and alloc.addr <= rsp <= alloc.addr + alloc.size:
            return f"{alloc.kind}_{alloc.size}", alloc.addr, alloc.size
    for addr, length in evidence.mmaps:
        if addr <= rsp <= addr + length:
            base, top = usable_part(addr, addr + length, evidence.no_access)
            return f"mmap_{top - base}", base, top - base
    if evidence.sigaltstack is not None:
        sp, size = evidence.sigaltstack
        if sp <= rsp <= sp + size:
            return "sigaltstack", sp, size
    if strong_only:
        return None
    taken = [s for s in evidence.heaps if s <= step]
    heap = evidence.heaps[max(taken)] if taken else (0, b"")
    chunk = heap_chunk(heap, evidence.heap_starts, rsp)
    if chunk is not None:
        return f"chunk_{chunk[1]}", chunk[0], chunk[1]
    return None


def heap_chunk(heap: tuple[int, bytes], starts: list[int], addr: int) -> tuple[int, int] | None:
    """(start, usable size) of the glibc malloc chunk whose memory holds `addr`.

    Without allocator symbols (a stripped program) the heap's own headers
    still tell the blocks apart: from where the allocator's part of the heap
    begins (one of the breaks the heap grew from: glibc's start-up takes the
    first piece for thread-local storage), each chunk is a previous-size word,
    a size word (flags in its low 3 bits) and the user's memory, which runs 8
    bytes into the next chunk's previous-size word.
    """
    base, data = heap
    for start in starts:
        offset = (start - base + 15) // 16 * 16
        while offset >= 0 and offset + 16 <= len(data):
            size = int.from_bytes(data[offset + 8 : offset + 16], "little") & ~0x7
            if size < 32 or size % 16 or offset + size > len(data):
                break  # not a chunk header: not the allocator's heap from here
            user = base + offset + 16
            if user <= addr <= user + size - 8:
                return user, size - 8
            offset += size
    return None
