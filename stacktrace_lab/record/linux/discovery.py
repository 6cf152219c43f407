"""Stacks found, not declared: a cheap pass over a real program before recording it.

A stack switch is rsp moving into another region. The discovery pass runs the
program once with a light hook (rsp only, one register read per step; in C
when the recording core was built) and
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

import bisect
import contextlib
import ctypes
import re
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import unicorn.x86_const as x86
from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_WRITE
from unicorn.unicorn_py3.unicorn import HOOK_CODE_CFUNC, HOOK_MEM_ACCESS_CFUNC, UcError, uclib

from ...arch import PAGE
from ...layout import Region
from ..core.hooks import TICK_MASK, _raw, add_raw_hook
from ..machine.machine import Control, Machine
from ..machine.syscalls import LinuxKernel
from ..machine.user_mode import NORMAL
from .elf import DataSymbol, ElfImage
from .naming import PROCESS_STACK, first_ran_label, identifier, unique, usable_part

#: How far below a found stack's base rsp may go and still be that stack (an overflow).
OVERFLOW_REACH = 64 << 10
#: A move of rsp by more than this (or from another stack) is a switch, not a push.
SWITCH_JUMP = 4096
HEAP_SNAPSHOTS = 64
#: Switches (rsp jumping to another stack) after which the code that ran is kept, and
#: how many steps of it: enough for glibc's `__swapcontext` to return into the entry
#: function after loading rsp (about 25 instructions, with its shadow-stack test).
FOLLOWED_SWITCHES = 4096
FOLLOWED_STEPS = 64
#: Stack words above an allocator's return address kept to find who asked (a build
#: without -O has big frames: `vec![0; 48]` goes through five of them before main).
CALLER_WORDS = 128
#: Functions that only pass an allocation on: the label names who called them.
_WRAPPERS = ("__rust_", "__rdl_", "__rg_", "alloc::", "<alloc::", "std::", "core::", "<core::")
#: A trait method of the standard library on any type (`<u8 as alloc::vec::spec_from_elem::
#: SpecFromElem>::from_elem`, which `vec![0; 48]` calls in a build without -O).
_STD_TRAIT_IMPL = re.compile(r"^<[^<>]* as (?:alloc|core|std)::")
ALLOCATORS = ("malloc", "calloc", "realloc", "free")
_JMP_SELF = (b"\xeb\xfe", b"\xe9\xfb\xff\xff\xff")


@dataclass(frozen=True)
class Allocation:
    step: int  # when it returned
    kind: str  # malloc, calloc, realloc
    addr: int
    size: int
    freed: int | None = None  # the step free() was called on it
    #: The allocator's return address, then the code addresses in the 32 stack words
    #: above it: who asked, past an allocation wrapper (Rust's `__rust_alloc_zeroed`).
    callers: tuple[int, ...] = ()


@dataclass
class Followed:
    """Steps kept after switches, in step order: each one's rip and rsp (arrays: up to
    `FOLLOWED_SWITCHES * FOLLOWED_STEPS` of them, 24 bytes each)."""

    steps: array[int] = field(default_factory=lambda: array("q"))
    rips: array[int] = field(default_factory=lambda: array("Q"))
    rsps: array[int] = field(default_factory=lambda: array("Q"))

    def add(self, step: int, rip: int, rsp: int) -> None:
        self.steps.append(step)
        self.rips.append(rip)
        self.rsps.append(rsp)

    def after(self, step: int) -> list[tuple[int, int]]:
        """(rip, rsp) of `step` and the kept steps right after it, up to `FOLLOWED_STEPS`."""
        i = bisect.bisect_left(self.steps, step)
        out: list[tuple[int, int]] = []
        while i < len(self.steps) and self.steps[i] == step + len(out):
            out.append((self.rips[i], self.rsps[i]))
            i += 1
            if len(out) == FOLLOWED_STEPS:
                break
        return out


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
    #: The first `FOLLOWED_STEPS` steps outside the process stack after each of the
    #: first `FOLLOWED_SWITCHES` switches: what ran first on a stack.
    followed: Followed = field(default_factory=lambda: Followed())


def run_discovery(
    machine: Machine,
    image: ElfImage,
    main_stack: Region,
    max_steps: int,
    progress: Callable[[int], None] | None = None,
    until: int = 0,
    earlier: Evidence | None = None,
) -> Evidence:
    """Run `machine` (already fast-forwarded to the start, if any) and collect the evidence.

    `until`: stop there (the start of a `--from` recording: this is then the run up
    to it, watched only for its allocations). `earlier`: that run's evidence; the
    blocks it allocated and did not free are known here, as allocated before step 0.

    The per-step part (rsp against the main stack, the self-jump test, the
    step rules) runs in C when the core was built (hooks.py), else in a
    Python hook; the allocator's entries and returns call back into Python.
    """
    uc = machine.uc
    evidence = Evidence()
    lo, hi = main_stack.base, main_stack.top
    allocator_at = {
        addr: name for name in ALLOCATORS if (addr := image.raw_symbols.get(name)) is not None
    }
    pending: list[tuple[str, int, int, int]] = []  # (kind, return address, rsp at entry, size)
    live: dict[int, int] = {}  # address -> index in allocations
    callers_of: dict[int, tuple[int, ...]] = {}  # index in pending -> Allocation.callers
    for old in earlier.allocations if earlier is not None else ():
        if old.freed is None:
            live[old.addr] = len(evidence.allocations)
            evidence.allocations.append(replace(old, step=-1))
    if machine.native is not None:
        walk: _Walk = _NativeWalk(machine, max_steps, lo, hi, list(allocator_at))
    else:
        walk = _PythonWalk(machine, max_steps, lo, hi, allocator_at)
    walk.until = until

    def outside(step: int) -> None:
        """rsp just left the process stack: keep the heap's headers as they are now."""
        if len(evidence.heaps) < HEAP_SNAPSHOTS:
            evidence.heaps[step] = _heap_now()

    def _heap_now() -> tuple[int, bytes]:
        kernel = machine.kernel
        if not isinstance(kernel, LinuxKernel) or kernel.process.brk <= kernel.process.brk_start:
            return (0, b"")
        start = kernel.process.brk_start
        return start, machine.read_or_zero(start, kernel.process.brk - start)

    def entered(address: int, rsp: int) -> None:
        kind = allocator_at[address]
        rdi = uc.reg_read(x86.UC_X86_REG_RDI)
        rsi = uc.reg_read(x86.UC_X86_REG_RSI)
        if kind == "free":
            index = live.pop(rdi, None)
            if index is not None:
                old = evidence.allocations[index]
                evidence.allocations[index] = Allocation(
                    old.step, old.kind, old.addr, old.size, walk.step(), old.callers
                )
            return
        size = {"malloc": rdi, "calloc": rdi * rsi, "realloc": rsi}[kind]
        ret = int.from_bytes(uc.mem_read(rsp, 8), "little")
        pending.append((kind, ret, rsp, size))
        above = machine.read_or_zero(rsp + 8, 8 * CALLER_WORDS)
        words = [int.from_bytes(above[i : i + 8], "little") for i in range(0, len(above), 8)]
        callers_of[len(pending) - 1] = (ret, *words)
        walk.set_want(ret)

    def returned(rsp: int) -> None:
        while pending and pending[-1][2] + 8 != rsp:
            if pending[-1][2] + 8 < rsp:
                pending.pop()  # left by a longjmp: forget it
            else:
                return  # a recursive return to the same place, deeper
        if not pending:
            return
        callers = callers_of.pop(len(pending) - 1, ())
        kind, _ret, _entry, size = pending.pop()
        addr = uc.reg_read(x86.UC_X86_REG_RAX)
        if addr:
            live[addr] = len(evidence.allocations)
            evidence.allocations.append(Allocation(walk.step(), kind, addr, size, callers=callers))
        walk.set_want(pending[-1][1] if pending else -1)

    machine.rules.tick = progress
    try:
        walk.run(outside, entered, returned)
    finally:
        machine.rules.tick = None
    evidence.outside = walk.outside()
    evidence.followed = walk.followed()
    evidence.steps = walk.step()
    evidence.lowest_main = walk.lowest()
    kernel = machine.kernel
    if isinstance(kernel, LinuxKernel):
        evidence.mmaps = list(kernel.process.mmaps)
        evidence.sigaltstack = kernel.process.sigaltstack
        evidence.heap_starts = list(kernel.process.brk_starts)
    evidence.no_access = [(begin, last + 1) for begin, last, perms in uc.mem_regions() if not perms]
    return evidence


class _Walk(Protocol):
    until: int

    def run(
        self,
        outside: Callable[[int], None],
        entered: Callable[[int, int], None],
        returned: Callable[[int], None],
    ) -> None: ...
    def step(self) -> int: ...
    def lowest(self) -> int: ...
    def outside(self) -> list[tuple[int, int]]: ...
    def followed(self) -> Followed: ...
    def set_want(self, address: int) -> None: ...


class _NativeWalk:
    """The discovery pass's per-step part in C (`_core.c`, DISCOVER)."""

    def __init__(
        self, machine: Machine, max_steps: int, lo: int, hi: int, watch: list[int]
    ) -> None:
        assert machine.native is not None
        self.machine = machine
        self.core = machine.native.core
        self.args = (
            max_steps,
            lo,
            hi,
            watch,
            HEAP_SNAPSHOTS,
            FOLLOWED_SWITCHES,
            FOLLOWED_STEPS,
            SWITCH_JUMP,
        )
        self.until = 0  # where the emulation stops (0: nowhere, the run's own end)

    def run(
        self,
        outside: Callable[[int], None],
        entered: Callable[[int, int], None],
        returned: Callable[[int], None],
    ) -> None:
        rules = self.machine.rules
        rules.outside, rules.entered, rules.returned = outside, entered, returned
        self.core.tick = rules.tick is not None
        self.core.attach_discover(*self.args)
        uc = self.machine.uc
        try:
            with contextlib.suppress(UcError):  # a fault ends the pass as it ends the recording
                rip = int(uc.reg_read(x86.UC_X86_REG_RIP))
                self.machine.emulate(rip, self.until, 0, self.machine.native_control())
        finally:
            self.core.detach()
            rules.outside = rules.entered = rules.returned = None
        self.core.raise_error()

    def step(self) -> int:
        return int(self.core.step)

    def lowest(self) -> int:
        return int(self.core.lowest)

    def outside(self) -> list[tuple[int, int]]:
        pairs = array("q", self.core.take_outside())
        steps, rsps = pairs[0::2], array("Q", pairs[1::2].tobytes())
        return list(zip(steps.tolist(), rsps.tolist(), strict=True))

    def followed(self) -> Followed:
        triples = array("q", self.core.take_followed())
        return Followed(
            triples[0::3], array("Q", triples[1::3].tobytes()), array("Q", triples[2::3].tobytes())
        )

    def set_want(self, address: int) -> None:
        self.core.want = address


class _PythonWalk:
    """The same per-step part as a Python hook: one register read per step."""

    def __init__(
        self, machine: Machine, max_steps: int, lo: int, hi: int, watch: dict[int, str]
    ) -> None:
        self.machine = machine
        self.max_steps, self.lo, self.hi, self.watch = max_steps, lo, hi, watch
        self.until = 0
        self.state = {"step": 0, "previous": -1, "want": -1, "lowest": hi, "stopped": 0}
        self.outside_steps = array("q")
        self.outside_rsp = array("Q")
        self.followed_steps = Followed()

    def run(
        self,
        outside: Callable[[int], None],
        entered: Callable[[int, int], None],
        returned: Callable[[int], None],
    ) -> None:
        machine, state = self.machine, self.state
        uc = machine.uc
        uch = uc._uch
        rules = machine.rules
        kinds = rules.decisions.kinds
        decide = rules.decisions.decide
        watched = rules.decisions.watched
        lo, hi, max_steps, watch = self.lo, self.hi, self.max_steps, self.watch
        outside_steps, outside_rsp = self.outside_steps, self.outside_rsp
        rsp_value = ctypes.c_uint64()
        rsp_ref = ctypes.byref(rsp_value)
        reg_read = _raw.uc_reg_read
        rsp_id = ctypes.c_int(x86.UC_X86_REG_RSP)
        calls_left = [HEAP_SNAPSHOTS]
        followed = self.followed_steps
        # [switches still to follow, steps of this one still to keep]
        follow = [FOLLOWED_SWITCHES, 0]

        def on_code(_handle: Any, address: int, size: int, _user: Any) -> None:
            if rules.pending_at >= 0:
                rules.answer_pending(address)
            step = state["step"]
            if step >= max_steps:
                state["stopped"] = 1
                uc.emu_stop()
                return
            reg_read(uch, rsp_id, rsp_ref)
            rsp = rsp_value.value
            if not lo <= rsp <= hi:
                continues = outside_steps and outside_steps[-1] == step - 1
                if not continues and calls_left[0] > 0:
                    calls_left[0] -= 1
                    outside(step)
                jumped = not continues or abs(rsp - outside_rsp[-1]) > SWITCH_JUMP
                if jumped and follow[0] > 0:
                    follow[0] -= 1
                    follow[1] = FOLLOWED_STEPS
                if follow[1] > 0:
                    followed.add(step, address, rsp)
                    follow[1] -= 1
                outside_steps.append(step)
                outside_rsp.append(rsp)
            else:
                follow[1] = 0  # back on the process stack: the switch is followed no further
                if rsp < state["lowest"]:
                    state["lowest"] = rsp
            if address == state["want"]:
                returned(rsp)
            elif address in watch:
                entered(address, rsp)
            if address == state["previous"] and bytes(uc.mem_read(address, 2)) == _JMP_SELF[0]:
                state["stopped"] = 1
                uc.emu_stop()
                return
            state["previous"] = address
            state["step"] = step + 1
            if not (step + 1) & TICK_MASK and rules.tick is not None:
                rules.tick(step + 1)
            kind = kinds.get(address) or decide(address) & 0xFF
            if kind != NORMAL:
                rules.decided(address, kind, size)

        def on_write(
            _handle: Any, _access: int, address: int, size: int, _value: int, _user: Any
        ) -> None:
            if address // PAGE in watched or (address + size - 1) // PAGE in watched:
                rules.written(address, size)

        code_hook, write_hook = HOOK_CODE_CFUNC(on_code), HOOK_MEM_ACCESS_CFUNC(on_write)
        handles = [
            add_raw_hook(uch, UC_HOOK_CODE, code_hook),
            add_raw_hook(uch, UC_HOOK_MEM_WRITE, write_hook),
        ]
        try:
            control = Control(
                lambda: state["step"],
                lambda: state["previous"],
                lambda rip: state.__setitem__("previous", rip),
                lambda: bool(state["stopped"]),
                rules.answer_pending,
            )
            with contextlib.suppress(UcError):  # a fault ends the pass as it ends the recording
                rip = int(uc.reg_read(x86.UC_X86_REG_RIP))
                self.machine.emulate(rip, self.until, 0, control)
        finally:
            for handle in handles:
                uclib.uc_hook_del(uch, handle)

    def step(self) -> int:
        return self.state["step"]

    def lowest(self) -> int:
        return self.state["lowest"]

    def outside(self) -> list[tuple[int, int]]:
        return list(zip(self.outside_steps.tolist(), self.outside_rsp.tolist(), strict=True))

    def followed(self) -> Followed:
        return self.followed_steps

    def set_want(self, address: int) -> None:
        self.state["want"] = address


def name_stacks(
    evidence: Evidence,
    data_symbols: tuple[DataSymbol, ...],
    function_of: Callable[[int], str | None] | None = None,
    symbol_of: Callable[[int], tuple[str, int] | None] | None = None,
) -> list[Region]:
    """The stacks the evidence shows, in the order rsp first reached them.

    `function_of(address)` names the function holding a code address (None outside
    the code): a stack in an allocation is labelled with who asked for it.
    `symbol_of(address)`: (function, offset in it) of a code address: a stack with no
    other label is labelled with the function that first ran on it (`stack of worker`)."""
    stacks: list[Region] = []
    first_steps: list[int] = []  # the step rsp first reached each stack
    visits: dict[int, list[int]] = {}  # index of a range-only stack -> rsp values
    index = _StackIndex(stacks)
    names: set[str] = {PROCESS_STACK}
    previous = (-2, 0)
    for step, rsp in evidence.outside:
        # rsp got here by a switch (from another stack, or a jump of more than a page),
        # not by pushing down from where it was: an overflow descends, a switch jumps.
        jumped = step != previous[0] + 1 or abs(rsp - previous[1]) > SWITCH_JUMP
        previous = (step, rsp)
        # Known bounds: in or just under (a stack rsp is in first, then one it is under).
        # Only the range visited: near it either way.
        owner = index.owner(rsp)
        found = None
        if owner is not None and jumped and rsp < stacks[owner].base:
            # Just under a stack, but a switch into a block of its own (the next
            # thread's stack, mapped right below): a new stack, not an overflow.
            found = _evidence_for(rsp, step, evidence, data_symbols, function_of, strong_only=True)
            if found is not None and found[1] != stacks[owner].base:
                owner = None
        if owner is not None:
            if owner in visits:
                visits[owner].append(rsp)
            continue
        found = found or _evidence_for(rsp, step, evidence, data_symbols, function_of)
        if found is None:
            visits[len(stacks)] = [rsp]
            found = (f"stack_{rsp:x}", rsp, 0, "")
        name, base, size, label = found
        stacks.append(Region(unique(name, names), "stack", base, max(size, 1), "rw-", label))
        first_steps.append(step)
        index.add(len(stacks) - 1, range_only=len(stacks) - 1 in visits)
    for k, values in visits.items():  # a range rsp visited: from its lowest to its highest
        low = min(values) // 16 * 16
        high = (max(values) + 8 + 15) // 16 * 16
        stacks[k] = Region(stacks[k].name, "stack", low, high - low, "rw-", stacks[k].label)
    if symbol_of is not None:
        for k, stack in enumerate(stacks):
            if not stack.label:
                function = _first_function(evidence.followed, first_steps[k], symbol_of)
                stacks[k] = replace(stack, label=first_ran_label(function) if function else "")
    return stacks


def _first_function(
    followed: Followed,
    step: int,
    symbol_of: Callable[[int], tuple[str, int] | None],
) -> str:
    """The function that first ran on the stack rsp jumped to at `step`, from the steps
    that followed the jump ("" when they were not kept).

    The first of them is in the switch routine (rsp is loaded before it returns or
    jumps), or at a function's first instruction when the trace starts there (`--from`
    a function that runs on the stack). The stack's function is the first one entered
    at its first instruction by a `ret` or a `jmp` (makecontext's function, which
    `__swapcontext` returns to; Boost's context function, which its trampoline jumps
    to), until the first `call` (rsp 8 lower at a function's first instruction): that
    is code the stack's function calls, or, on a stack resumed in the middle of a
    function, that function's callee. Then it is the first function other than the
    switch routine's (the resumed one), else the one called (a thread's `start_thread`,
    which `clone3` calls)."""
    switcher: str | None = None
    other = ""
    previous_rsp = -1
    for at, (rip, rsp) in enumerate(followed.after(step), start=step):
        if at > step and abs(rsp - previous_rsp) > SWITCH_JUMP:
            break  # switched again: another stack's code from here
        symbol = symbol_of(rip)
        name, offset = symbol if symbol is not None else (None, -1)
        if at == step:
            if offset == 0:
                return str(name)  # the run starts at a function's entry on this stack
            switcher = name
        elif name is not None and offset == 0:
            if rsp != previous_rsp - 8:
                return name  # returned or jumped to a function's entry
            return other or name  # called: code the stack's function runs
        elif name is not None and name != switcher and not other:
            other = name
        previous_rsp = rsp
    return other


class _StackIndex:
    """The stacks `name_stacks` has found, by address: the one rsp belongs to without a
    pass over every stack at every step outside the process stack (a program with
    1,024 coroutine stacks made that quadratic).

    A stack with known bounds holds rsp from its base to its top, and rsp up to
    `OVERFLOW_REACH` under its base is its overflow; a range-only stack (no
    allocation or mapping known, still growing) reaches that far either way. Of
    the stacks rsp is in, the first found owns it; else the first found that rsp is
    under. Range-only stacks are few and looked at one by one."""

    def __init__(self, stacks: list[Region]) -> None:
        self.stacks = stacks
        self.bases: list[int] = []  # bounded stacks' bases, sorted
        self.order: list[int] = []  # the index in `stacks` of each base
        self.longest = 0  # the largest bounded stack
        self.range_only: list[int] = []

    def add(self, k: int, range_only: bool) -> None:
        if range_only:
            self.range_only.append(k)
            return
        stack = self.stacks[k]
        i = bisect.bisect_right(self.bases, stack.base)
        self.bases.insert(i, stack.base)
        self.order.insert(i, k)
        self.longest = max(self.longest, stack.top - stack.base)

    def _bounded(self, low: int, high: int) -> list[int]:
        """Bounded stacks whose base is in [low, high]."""
        first = bisect.bisect_left(self.bases, low)
        last = bisect.bisect_right(self.bases, high)
        return self.order[first:last]

    def owner(self, rsp: int) -> int | None:
        stacks = self.stacks
        inside = [k for k in self._bounded(rsp - self.longest, rsp) if rsp <= stacks[k].top]
        inside += [
            k for k in self.range_only if stacks[k].base <= rsp <= stacks[k].top + OVERFLOW_REACH
        ]
        if inside:
            return min(inside)
        under = self._bounded(rsp + 1, rsp + OVERFLOW_REACH)
        under += [
            k for k in self.range_only if stacks[k].base - OVERFLOW_REACH <= rsp < stacks[k].base
        ]
        return min(under) if under else None


def _evidence_for(
    rsp: int,
    step: int,
    evidence: Evidence,
    data_symbols: tuple[DataSymbol, ...],
    function_of: Callable[[int], str | None] | None = None,
    strong_only: bool = False,
) -> tuple[str, int, int, str] | None:
    """(name, base, size, label) of the block `rsp` lies in, by the best evidence; with
    `strong_only`, only a symbol, a live allocation or a mapping (not a heap chunk read
    from headers, which an overflow runs over as often as a stack lives in one)."""
    for sym in data_symbols:
        if sym.addr <= rsp <= sym.addr + sym.size:
            name = identifier(sym.name)
            return name, sym.addr, sym.size, sym.name if sym.name != name else ""
    for alloc in reversed(evidence.allocations):
        alive = alloc.step <= step and (alloc.freed is None or step < alloc.freed)
        if alive and alloc.addr <= rsp <= alloc.addr + alloc.size:
            label = f"{alloc.kind}({alloc.size})"
            asker = _asker(alloc.callers, function_of)
            label += f" in {asker}" if asker else ""
            return f"{alloc.kind}_{alloc.size}", alloc.addr, alloc.size, label
    for addr, length in evidence.mmaps:
        if addr <= rsp <= addr + length:
            base, top = usable_part(addr, addr + length, evidence.no_access)
            return f"mmap_{top - base}", base, top - base, ""
    if evidence.sigaltstack is not None:
        sp, size = evidence.sigaltstack
        if sp <= rsp <= sp + size:
            return "sigaltstack", sp, size, ""
    if strong_only:
        return None
    taken = [s for s in evidence.heaps if s <= step]
    heap = evidence.heaps[max(taken)] if taken else (0, b"")
    chunk = heap_chunk(heap, evidence.heap_starts, rsp)
    if chunk is not None:
        return f"chunk_{chunk[1]}", chunk[0], chunk[1], ""
    return None


def _asker(callers: tuple[int, ...], function_of: Callable[[int], str | None] | None) -> str:
    """The function that asked for an allocation: the allocator's caller, or past
    allocation wrappers (Rust's `__rust_alloc_zeroed` ...) the first code address above
    it on the stack in a function that is not one; "" when unknown."""
    if function_of is None or not callers:
        return ""
    direct = function_of(callers[0]) or ""
    for address in callers:
        name = function_of(address)
        if name and not name.startswith(_WRAPPERS) and not _STD_TRAIT_IMPL.match(name):
            return name
    return direct


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
