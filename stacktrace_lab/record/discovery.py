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
4. else the range rsp visited there (`stack_<address>`).

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
from .syscalls import LinuxKernel

#: How far below a found stack's base rsp may go and still be that stack (an overflow).
OVERFLOW_REACH = 64 << 10
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
    state = {"step": 0, "previous": -1, "want": -1}

    def on_code(_uc: Any, address: int, _size: int, _user: Any) -> None:
        step = state["step"]
        if step >= max_steps:
            uc.emu_stop()
            return
        reg_read(uch, rsp_id, rsp_ref)
        rsp = rsp_value.value
        if not lo <= rsp <= hi:
            outside_steps.append(step)
            outside_rsp.append(rsp)
        if address == state["want"]:
            _returned(rsp)
        elif address in allocator_at:
            _entered(allocator_at[address], rsp)
        if address == state["previous"] and bytes(uc.mem_read(address, 2)) == _JMP_SELF[0]:
            uc.emu_stop()
            return
        state["previous"] = address
        state["step"] = step + 1

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
    kernel = machine.kernel
    if isinstance(kernel, LinuxKernel):
        evidence.mmaps = list(kernel.process.mmaps)
        evidence.sigaltstack = kernel.process.sigaltstack
    return evidence


def name_stacks(evidence: Evidence, data_symbols: tuple[DataSymbol, ...]) -> list[Region]:
    """The stacks the evidence shows, in the order rsp first reached them."""
    stacks: list[Region] = []
    visits: dict[int, list[int]] = {}  # index of a range-only stack -> rsp values
    names: set[str] = {"main"}
    for step, rsp in evidence.outside:
        if any(s.base - OVERFLOW_REACH <= rsp <= s.top for s in stacks):
            for k, values in visits.items():
                if stacks[k].base <= rsp <= stacks[k].top + OVERFLOW_REACH:
                    values.append(rsp)
            continue
        found = _evidence_for(rsp, step, evidence, data_symbols)
        if found is None:
            visits[len(stacks)] = [rsp]
            found = (f"stack_{rsp:x}", rsp, 0)
        name, base, size = found
        unique = name
        n = 2
        while unique in names:
            unique = f"{name}_{n}"
            n += 1
        names.add(unique)
        stacks.append(Region(unique, "stack", base, max(size, 1), "rw-"))
    for k, values in visits.items():  # a range rsp visited: from its lowest to its highest
        low = min(values) // 16 * 16
        high = (max(values) + 8 + 15) // 16 * 16
        stacks[k] = Region(stacks[k].name, "stack", low, high - low, "rw-")
    return stacks


def _evidence_for(
    rsp: int, step: int, evidence: Evidence, data_symbols: tuple[DataSymbol, ...]
) -> tuple[str, int, int] | None:
    for sym in data_symbols:
        if sym.addr <= rsp <= sym.addr + sym.size:
            return _label(sym.name), sym.addr, sym.size
    for alloc in reversed(evidence.allocations):
        alive = alloc.step <= step and (alloc.freed is None or step < alloc.freed)
        if alive and alloc.addr <= rsp <= alloc.addr + alloc.size:
            return f"{alloc.kind}_{alloc.size}", alloc.addr, alloc.size
    for addr, length in evidence.mmaps:
        if addr <= rsp <= addr + length:
            return f"mmap_{length}", addr, length
    if evidence.sigaltstack is not None:
        sp, size = evidence.sigaltstack
        if sp <= rsp <= sp + size:
            return "sigaltstack", sp, size
    return None


def _label(name: str) -> str:
    """A region name usable in `REGION:INDEX` and a column name: `a::b` -> `a.b`."""
    cleaned = name.replace("::", ".")
    return "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in cleaned)
