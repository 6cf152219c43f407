"""The emulated machine: unicorn behind one class, built from parts.

- memory: a `MachineSpec` says what to map (`Mapping`s with their bytes) and
  what the trace calls each range (`Region`s); a front end (a scenario, an
  ELF program) writes the spec, the machine does not know which;
- the CPU model (`cpu.py`): fixed cpuid, rdtsc, rdrand... answers;
- the kernel (`syscalls.py`): the system calls, logged;
- user mode (`user_mode.py`): each executed address decided once;
- the per-step hooks (`hooks.py`): in C when the extension was built, else
  in Python, with the same rows.

Per executed instruction the hooks append raw bytes to columnar buffers;
turning them into Arrow arrays happens once per chunk of steps, in
`record/core/columns.py`. The Python hooks are ctypes callbacks registered
directly with unicorn's C library: the binding's own `hook_add` and
`reg_read` wrap every call in several Python frames, which costs more than
the recording itself (measured in benchmarks/, see docs/performance.md).

What a hook sees (checked in tests/test_machine.py):
- the code hook runs before the instruction, so registers read there are the
  pre-state that a trace row holds;
- the write hook runs before the write lands, with the value; a 16-byte SSE
  store arrives as two 8-byte writes (merged later);
- `UC_HOOK_MEM_READ_AFTER` gives the value read, so no `mem_read` is needed;
- a write to an unmapped or read-only page reaches the write hook before the
  invalid-access hook, so the recorder drops it from the log.
"""

from __future__ import annotations

import copy
import ctypes
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any

import numpy as np
import numpy.typing as npt
import unicorn.x86_const as x86
from unicorn import (
    UC_ARCH_X86,
    UC_ERR_INSN_INVALID,
    UC_ERR_OK,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_INVALID,
    UC_HOOK_MEM_WRITE,
    UC_MEM_FETCH_PROT,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_READ_PROT,
    UC_MEM_READ_UNMAPPED,
    UC_MEM_WRITE_PROT,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_64,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
)
from unicorn.unicorn_py3.unicorn import HOOK_MEM_INVALID_CFUNC, Uc, UcError, uclib

from ...arch import PAGE, REGISTERS, WORD
from ...layout import Region
from ...safe_output import Interrupted
from ...trace.format import SyscallRecord
from ..core.hooks import (
    MEM_WRITE,
    NATIVE_MAX_STEPS,
    NATIVE_SPIN,
    ROW_BYTES,
    UC_IDS,
    MemEvent,
    NativeHooks,
    NativeRecording,
    PythonRecording,
    StepRules,
    _emu_stop,
    add_raw_hook,
    native_core,
    python_counter,
)
from .cpu import CpuModel
from .initial_state import start_as_linux
from .registers import RegisterBatch
from .syscalls import MASK64, BareKernel
from .threads import DEFAULT_SLICE, EXITED
from .user_mode import Decisions

# Re-exported: the register order and row layout every reader of a Chunk uses.
__all__ = ["MEM_WRITE", "ROW_BYTES", "UC_IDS", "MemEvent"]
_HLT = 0xF4
_RIP = REGISTERS.index("rip")

_FAULT_ACCESS = {
    UC_MEM_READ_UNMAPPED: "read of unmapped",
    UC_MEM_WRITE_UNMAPPED: "write to unmapped",
    UC_MEM_FETCH_UNMAPPED: "fetch from unmapped",
    UC_MEM_READ_PROT: "read of protected",
    UC_MEM_WRITE_PROT: "write to protected",
    UC_MEM_FETCH_PROT: "fetch from protected",
}
#: x86 exception vectors a user program can raise, by name.
_EXCEPTIONS = {
    0: "divide error (#DE)",
    1: "debug exception (#DB)",
    3: "breakpoint (#BP, int3)",
    4: "overflow (#OF)",
    5: "bound range exceeded (#BR)",
    6: "invalid opcode (#UD)",
    13: "general protection fault (#GP)",
    14: "page fault (#PF)",
    17: "alignment check (#AC)",
}
_PERMS = {"r": UC_PROT_READ, "w": UC_PROT_WRITE, "x": UC_PROT_EXEC}
#: What `syscall` reads (rip, rflags) and writes (rcx, r11) as the CPU does.
_SYSCALL_READS = RegisterBatch((x86.UC_X86_REG_RIP, x86.UC_X86_REG_EFLAGS))
_SYSCALL_WRITES = RegisterBatch((x86.UC_X86_REG_RCX, x86.UC_X86_REG_R11))
#: Instructions run before recording starts (`--from`) at most.
FAST_FORWARD_LIMIT = 200_000_000


@dataclass
class Stop:
    reason: str
    step: int
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"reason": self.reason, "step": self.step, "detail": self.detail}


@dataclass
class Chunk:
    """Rows `first_step ..< first_step + rows` as raw buffers."""

    first_step: int
    #: REGISTERS as little-endian uint64, register by register: all rows' rip,
    #: then all rows' rsp... (each becomes an Arrow column as it is).
    registers: bytes
    #: MemEvents: a list of tuples (Python hooks), or packed int64 quintuples (C core).
    events: list[MemEvent] | bytes
    #: The bytes of the instructions that ran outside the program's code as
    #: loaded (code written or mapped at run time), by address, read from
    #: memory when the chunk was handed over (`Machine.run_code`).
    code: dict[int, bytes] = field(default_factory=dict)
    #: The thread of each row (1: the process's first), uint16 little-endian;
    #: empty: every row is thread 1.
    threads: bytes = b""

    @property
    def rows(self) -> int:
        return len(self.registers) // ROW_BYTES

    def by_register(self) -> npt.NDArray[np.uint64]:
        """The registers as a (len(REGISTERS), rows) array, a view of the bytes."""
        return np.frombuffer(self.registers, dtype="<u8").reshape(len(REGISTERS), self.rows)


@dataclass
class RunResult:
    stop: Stop
    steps: int
    initial: dict[str, int]
    final: dict[str, int]
    stdout: bytes
    stderr: bytes
    #: The number of the signal (SIGINT, SIGTERM, SIGHUP) that stopped the run, 0 if none.
    interrupted: int = 0
    syscalls: list[SyscallRecord] = field(default_factory=list)
    #: Output bytes written past `MachineSpec.max_output` and not kept.
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    #: The process's threads (each one's number, tid, ...), when it made any.
    threads: list[dict[str, object]] = field(default_factory=list)


@dataclass(frozen=True)
class Control:
    """What switching threads needs from the hooks of one pass (fast-forward,
    discovery, recording): they count steps and keep the last rip (the `rep`
    rule) and a fixed-value instruction's pending answer."""

    step: Callable[[], int]
    previous_rip: Callable[[], int]
    set_previous_rip: Callable[[int], None]
    #: The hooks stopped the pass (max steps, a spin, an error).
    stopped: Callable[[], bool]
    #: The emulation stopped before the instruction at this rip: give a pending answer now.
    settle: Callable[[int], None]


@dataclass
class Checkpoint:
    """A machine's state between runs, to go back to (`Machine.checkpoint`, `rewind`)."""

    context: Any  # unicorn's CPU context
    #: (begin, last, perms) of each mapping, and its bytes, in that order (`_read_pages`).
    regions: list[tuple[int, int, int]]
    memory: list[npt.NDArray[np.uint64]]
    kernel: BareKernel  # a copy, the machine's own callbacks left out
    tsc: int
    rewritten: set[int]
    fast_forwarded: int


@dataclass(frozen=True)
class Mapping:
    """Pages to map, and the bytes they start with (the rest is zero)."""

    start: int  # page aligned
    size: int  # a whole number of pages
    perms: str  # "r-x"
    data: bytes = b""
    data_at: int = 0  # address of data[0]


@dataclass
class MachineSpec:
    """Everything the machine needs, whichever front end wrote it."""

    mappings: list[Mapping]
    #: What the trace names: the code region first.
    regions: list[Region]
    entry: int
    #: Registers set before the first step (all others start at zero).
    registers: dict[str, int] = field(default_factory=dict)
    #: Memory written before the first step (the sentinel return address).
    memory: dict[int, bytes] = field(default_factory=dict)
    #: Where a return to the sentinel lands; reaching it ends the run. None: no sentinel.
    sentinel: int | None = None
    #: When the sentinel is a symbol to stop at (`--to`) rather than a return address.
    stop_at: str | None = None
    #: Makes the system calls' kernel, fresh for each machine.
    kernel: Callable[[], BareKernel] = BareKernel
    #: Makes the CPU model (the silicon check gives one that replays a native run).
    cpu: Callable[[], CpuModel] = CpuModel
    #: Bytes of stdout and of stderr kept; the rest is counted (limits.py).
    max_output: int = 1 << 20
    #: Instructions a thread runs before the next runnable one (threads.py).
    thread_slice: int = DEFAULT_SLICE

    @property
    def code_region(self) -> Region:
        return self.regions[0]


def scenario_spec(
    code: bytes,
    code_region: Region,
    regions: list[Region],
    entry: int,
    registers: dict[str, int],
    memory: dict[int, bytes],
    sentinel: int,
) -> MachineSpec:
    """A scenario's machine: its code, its declared regions, write and exit only."""
    mappings = [
        Mapping(
            code_region.map_start, code_region.map_size, code_region.perms, code, code_region.base
        )
    ]
    mappings += [Mapping(r.map_start, r.map_size, r.perms) for r in regions]
    return MachineSpec(
        mappings=mappings,
        regions=[code_region, *regions],
        entry=entry,
        registers=registers,
        memory=memory,
        sentinel=sentinel,
    )


def _unique_ram_offsets(uc: Uc) -> None:
    """Make unicorn give each mapping RAM addresses of its own.

    Until a first mapping is freed, unicorn 2 (qemu/exec.c, `find_ram_offset_last`)
    places a new mapping's memory after the *smallest* mapping's, so mappings made
    after a bigger one share its RAM addresses: the program's code, its data, its
    stack and heap all started at the same one. Translated code is found and
    invalidated by RAM address, so a write by the kernel into the stack (a `read`),
    an `mprotect` or `munmap` of data, threw away translated code as well, which
    was then translated again. Once a mapping has been freed, unicorn searches for a
    free range instead: map a page and free it before anything else."""
    uc.mem_map(0, PAGE, UC_PROT_READ)
    uc.mem_unmap(0, PAGE)


def map_memory(uc: Uc, mappings: list[Mapping], memory: dict[int, bytes]) -> None:
    for mapping in mappings:
        perms = 0
        for ch in mapping.perms:
            perms |= _PERMS.get(ch, 0)
        if mapping.size:  # a size of 0 only brings bytes into pages mapped before
            uc.mem_map(mapping.start, mapping.size, perms)
        if mapping.data:
            uc.mem_write(mapping.data_at, mapping.data)
    for addr, data in memory.items():
        uc.mem_write(addr, data)


class Machine:
    """One emulated run. `run()` calls `on_chunk` every `chunk_rows` steps and at the end."""

    def __init__(self, spec: MachineSpec) -> None:
        self.spec = spec
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        start_as_linux(self.uc)
        _unique_ram_offsets(self.uc)
        map_memory(self.uc, spec.mappings, spec.memory)
        for name, value in spec.registers.items():
            self.uc.reg_write(UC_IDS[REGISTERS.index(name)], value)
        self.uc.reg_write(x86.UC_X86_REG_RIP, spec.entry)
        self.kernel = spec.kernel()
        self.kernel.max_output = spec.max_output
        self.kernel.write_memory = self._kernel_write
        self.kernel.code_changed = self.forget_code
        if self.kernel.threads is not None:
            self.kernel.threads.slice = spec.thread_slice
            self.kernel.threads.all[0].stack_top = spec.registers.get("rsp", 0)
        #: (first step, thread number) of each stretch a thread ran, in `run`.
        self.thread_runs: list[tuple[int, int]] = [(0, 1)]
        self.cpu = spec.cpu()
        self.cpu.install(self.uc)
        self.decisions = Decisions(self.uc)
        #: The program's code as loaded: [start, end) of each executable mapping with bytes.
        self._loaded_code = sorted(
            (m.data_at, m.data_at + len(m.data)) for m in spec.mappings if "x" in m.perms and m.data
        )
        self.rules = StepRules(self.uc, self.decisions, self.cpu, self.request_stop)
        core_type = native_core()
        #: The C core (hooks.py), None where it was not built: the Python hooks run.
        self.native = NativeHooks(core_type, self.uc, self.rules) if core_type else None
        self._fault: tuple[int, int, int] | None = None  # access, address, size
        #: Instructions `fast_forward` ran before recording began.
        self.fast_forwarded = 0
        self._interrupt: Stop | None = None
        #: The step being run and the last recorded rip, as `run` counts them
        #: (read by the hooks below only when they fire, not at every step).
        self._step_now: Callable[[], int] = lambda: -1
        self._rip_now: Callable[[], int] = lambda: -1
        self.uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, x86.UC_X86_INS_SYSCALL)
        self.uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        self._invalid = HOOK_MEM_INVALID_CFUNC(self._on_invalid)
        add_raw_hook(self.uc._uch, UC_HOOK_MEM_INVALID, self._invalid)

    def fork(self) -> Machine | None:
        """A second machine in this one's state, between runs: its memory (every
        mapping, with its protection), the CPU (unicorn's context), the kernel
        (files, mappings, output, log: copied, sharing the file view), the CPU
        model's counter and the instruction decisions, and `fast_forwarded`. For
        `--from` of a dynamically linked program: the recording's machine is a copy
        of the discovery pass's at the program's entry, so the loader (99% of the
        start-up, as much CPU as the rest of a short recording) runs once.

        None when the state holds what a copy would not be sure to carry: another
        thread (its saved CPU context), a CPU model other than the fixed one (the
        silicon check's replays a native run), an answer still pending."""
        kernel = self.kernel
        if kernel.threads is not None and len(kernel.threads.all) > 1:
            return None
        if type(self.cpu) is not CpuModel or self.rules.pending_at != -1:
            return None
        # A machine with nothing mapped, then this one's pages, CPU, kernel copied in.
        twin = Machine(replace(self.spec, mappings=[], memory={}))
        twin.spec = self.spec
        twin._loaded_code = list(self._loaded_code)
        for begin, last, perms in self.uc.mem_regions():
            size = last - begin + 1
            twin.uc.mem_map(begin, size, perms)
            _copy_pages(self.uc, twin.uc, begin, size)
        twin.uc.context_restore(self.uc.context_save())
        twin._take_kernel(self._kernel_copy())
        twin.cpu.tsc = self.cpu.tsc
        self.decisions.copy_to(twin.decisions)
        twin.fast_forwarded = self.fast_forwarded
        return twin

    def _kernel_copy(self) -> BareKernel:
        """A copy of the kernel (files, mappings, output, log) without the machine's own
        callbacks and unicorn handle; the file view is shared (it lists every file the
        program read, in every run)."""
        kernel = self.kernel
        kept = (kernel.write_memory, kernel.code_changed, kernel._uc)
        memo: dict[int, Any] = {}
        view = getattr(kernel, "view", None)
        if view is not None:
            memo[id(view)] = view
        try:
            kernel.write_memory = kernel.code_changed = kernel._uc = None  # type: ignore[assignment]
            copied = copy.deepcopy(kernel, memo)
        finally:
            kernel.write_memory, kernel.code_changed, kernel._uc = kept
        # Marks whether the kernel had a handle (the copy gets this machine's, _take_kernel).
        copied._uc = kept[2]
        return copied

    def _take_kernel(self, kernel: BareKernel) -> None:
        """Run on `kernel` (a `_kernel_copy`), wired to this machine."""
        self.kernel = kernel
        kernel.write_memory = self._kernel_write
        kernel.code_changed = self.forget_code
        kernel._uc = self.uc if kernel._uc is not None else None

    def checkpoint(self) -> Checkpoint | None:
        """This machine's state between runs, for `rewind`: the discovery pass runs the
        program, then the machine goes back to where that pass started and records,
        on the code unicorn translated for the pass (a fresh machine translates it all
        again: most of what a step of a program's first run costs, docs/performance.md).

        None when the state holds what `fork` would not copy either (another thread,
        another CPU model, an answer pending), or on the pure-Python hooks, which are
        registered per run (deleting a code hook drops what unicorn translated with it)."""
        kernel = self.kernel
        if self.native is None or (kernel.threads is not None and len(kernel.threads.all) > 1):
            return None
        if (
            type(self.cpu) is not CpuModel
            or self.rules.pending_at != -1
            or self.native.core.pending
        ):
            return None
        regions = list(self.uc.mem_regions())
        return Checkpoint(
            context=self.uc.context_save(),
            regions=regions,
            memory=[_read_pages(self.uc, begin, last - begin + 1) for begin, last, _ in regions],
            kernel=self._kernel_copy(),
            tsc=self.cpu.tsc,
            rewritten=set(self.decisions.rewritten),
            fast_forwarded=self.fast_forwarded,
        )

    def rewind(self, checkpoint: Checkpoint) -> None:
        """Put the machine back in the state `checkpoint` saw (used once: the kernel
        is the checkpoint's copy): mappings made since unmapped, those removed or
        reprotected mapped again, the bytes written since written back, the CPU, the
        kernel, the CPU model's counter. Decisions on the pages that changed are
        forgotten (their code is decided again when it runs); the others stand, as the
        code there is the same."""
        uc = self.uc
        kept = set(checkpoint.regions)
        for begin, last, perms in list(uc.mem_regions()):
            if (begin, last, perms) not in kept:
                uc.mem_unmap(begin, last - begin + 1)
                self.forget_code(begin, last - begin + 1)
        now = set(uc.mem_regions())
        for (begin, last, perms), saved in zip(checkpoint.regions, checkpoint.memory, strict=True):
            size = last - begin + 1
            if (begin, last, perms) not in now:
                uc.mem_map(begin, size, perms)
                changed = np.flatnonzero(saved.any(axis=1))
                self.forget_code(begin, size)
            else:
                changed = np.flatnonzero((_read_pages(uc, begin, size) != saved).any(axis=1))
            for first, count in _runs(changed):
                offset, length = first * PAGE, count * PAGE
                _write_pages(uc, begin + offset, saved[first : first + count])
                if (begin, last, perms) in now:
                    self.forget_code(begin + offset, length)
        uc.context_restore(checkpoint.context)
        self._take_kernel(checkpoint.kernel)
        self.cpu.tsc = checkpoint.tsc
        self.decisions.rewritten = set(checkpoint.rewritten)
        self.rules.pending_at = -1
        assert self.native is not None
        self.native.core.rewound()
        self.fast_forwarded = checkpoint.fast_forwarded
        self._fault = None
        self._interrupt = None
        self.thread_runs = [(0, 1)]

    def registers(self) -> dict[str, int]:
        return {
            name: int(self.uc.reg_read(uid)) for name, uid in zip(REGISTERS, UC_IDS, strict=True)
        }

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(addr, size))

    def read_or_zero(self, addr: int, size: int) -> bytes:
        """Memory as the program would find it: pages not mapped yet (a heap
        that brk maps later) read as the zeros they will start with."""
        out = bytearray(size)
        for begin, last, _ in self.uc.mem_regions():
            lo, hi = max(begin, addr), min(last + 1, addr + size)
            if lo < hi:
                out[lo - addr : hi - addr] = self.uc.mem_read(lo, hi - lo)
        return bytes(out)

    def forget_code(self, addr: int, size: int) -> None:
        """Memory there was remapped, reprotected or written by the kernel: any
        instruction decided there is decided again when it runs (user_mode.py)."""
        self.decisions.forget(addr, size)
        if self.native is not None:
            self.native.core.forget(addr, size)

    def _kernel_write(self, addr: int, data: bytes) -> None:
        """A write by a system call outside a recording (`run` also logs it)."""
        self.uc.mem_write(addr, data)
        # Whether any page holds decided code: the C core decides most addresses
        # without telling `decisions` (record/core/native_capstone.py).
        watching = self.native.core.watching if self.native is not None else False
        if watching or self.decisions.watched:
            self.forget_code(addr, len(data))

    # --- hooks every run has --------------------------------------------------------

    def _on_syscall(self, uc: Uc, _user: Any) -> None:
        # The CPU's own part of `syscall`, which unicorn skips once a hook
        # handles the call: rcx = the next instruction, r11 = rflags (Linux
        # gives both back unchanged). Found by the silicon check (docs/silicon.md).
        rip, rflags = _SYSCALL_READS.read(uc)  # rip: the `syscall` itself, 2 bytes
        _SYSCALL_WRITES.write(uc, (rip + 2, rflags))
        self.kernel.handle(uc, self._step_now())
        if self.kernel.stop is not None:
            uc.emu_stop()

    def _on_interrupt(self, uc: Uc, number: int, _user: Any) -> None:
        # Without this hook unicorn only says "Unhandled CPU exception";
        # name the exception and the instruction that raised it.
        name = _EXCEPTIONS.get(number, f"interrupt {number:#x}")
        rip = self._rip_now()
        rip = rip if rip >= 0 else int(uc.reg_read(x86.UC_X86_REG_RIP))
        self._interrupt = Stop("fault", -1, f"{name} at {rip:#x}")
        uc.emu_stop()

    def request_stop(self, reason: str, detail: str) -> None:
        """Stop the run from a callback (a limit reached); the steps so far are kept."""
        if self._interrupt is None:
            self._interrupt = Stop(reason, -1, detail)
        self.uc.emu_stop()

    def _on_invalid(
        self, _handle: Any, access: int, address: int, size: int, _value: int, _user: Any
    ) -> bool:
        self._fault = (access, address, size)
        return False

    # --- running ------------------------------------------------------------------------

    def fast_forward(
        self,
        until: int,
        limit: int = FAST_FORWARD_LIMIT,
        progress: Callable[[int], None] | None = None,
    ) -> Stop | None:
        """Run without recording until rip == `until` (for `--from`). None when it got
        there (`fast_forwarded` says after how many instructions); else why it stopped.

        Only a counter per step (in C, or a Python one) and the step rules: the
        CPU is in user mode before the first recorded step too."""
        uch = self.uc._uch
        handles: list[Any] = []
        self.rules.tick = progress
        if self.native is not None:
            core = self.native.core
            core.tick = progress is not None
            core.attach_count()
            counted: Callable[[], int] = lambda: int(core.step)  # noqa: E731
            control = self.native_control()
        else:
            counted, callbacks, previous = python_counter(self.uc, self.rules)
            handles = [
                add_raw_hook(uch, UC_HOOK_CODE, callbacks[0]),
                add_raw_hook(uch, UC_HOOK_MEM_WRITE, callbacks[1]),
            ]
            control = Control(
                counted,
                lambda: previous[0],
                lambda rip: previous.__setitem__(0, rip),
                lambda: False,
                self.rules.answer_pending,
            )
        # From where the machine is: its entry, or where an earlier fast-forward
        # stopped (a `fork` made at the program's entry goes on to `--from`).
        begin = int(self.uc.reg_read(x86.UC_X86_REG_RIP))
        before = self.fast_forwarded
        try:
            self.emulate(begin, until, limit, control)
        except UcError as exc:
            return self._fault_stop(exc, -1, lambda _step: None)
        finally:
            if self.native is not None:
                self.native.core.detach()
            for handle in handles:
                uclib.uc_hook_del(uch, handle)
            self.rules.tick = None
            self.fast_forwarded = before + counted()
        if self.native is not None:
            self.native.core.raise_error()
        return self.reached(until, self.fast_forwarded, limit)

    def reached(
        self, until: int, steps: int, limit: int = FAST_FORWARD_LIMIT, counted: bool = True
    ) -> Stop | None:
        """After a run meant to end at `until` (a fast-forward, or discovery's run to
        `--from`, `counted=False`: it ends at a fault or a spin too) of `steps`
        instructions: None when it got there, else why not."""
        self.fast_forwarded = steps
        if self.kernel.stop is not None:
            return Stop(self.kernel.stop.reason, -1, self.kernel.stop.detail)
        if self._interrupt is not None:
            return self._interrupt
        rip = int(self.uc.reg_read(x86.UC_X86_REG_RIP))
        if rip != until:
            if not counted:
                return Stop(
                    "stopped",
                    -1,
                    f"the start-up ended at rip {rip:#x} after {steps} instructions "
                    f"(a fault, a spin, or the limit of {limit})",
                )
            return Stop("max_steps", -1, f"not reached after {limit} instructions")
        self.stop_translated(until)
        return None

    def stop_translated(self, address: int) -> None:
        """Translate again the code at `address`, where an emulation stopped or will stop.

        unicorn builds the stop at emu_start's `until` into the blocks it translates
        (and at each emu_start drops only the blocks holding the byte before `until`),
        and the C core's hooks stay registered from one run to the next, so a block
        translated by a run to `--from` would stop every later run there, and one
        translated by the discovery pass (which stops nowhere) would not stop the
        recording at `--to`'s symbol. (A range from address 0, unmapped, drops nothing:
        unicorn finds the RAM of the range's first page only.)"""
        if address:
            self.uc.ctl_remove_cache(address, address + 1)

    def run_code(self, rips: npt.NDArray[np.uint64]) -> dict[int, bytes]:
        """The bytes of each instruction of a chunk (`rips`: its rows' rip) that did
        not run from the program's code as loaded: code outside its executable
        mappings (a JIT's, a library's) or on a page written since (self-modifying
        code). Read now, at the end of the chunk: an instruction rewritten twice
        within one chunk shows its last bytes on every row of that chunk."""
        elsewhere = np.ones(len(rips), dtype=np.bool_)
        for start, end in self._loaded_code:
            elsewhere &= (rips < start) | (rips >= end)
        if self.decisions.rewritten:
            rewritten = np.sort(np.fromiter(self.decisions.rewritten, dtype=np.uint64))
            pages = rips // np.uint64(PAGE)
            # np.isin, by a search in the sorted pages (np.isin and np.unique import
            # numpy.ma, 10 ms of every recording of a dynamically linked program).
            found = np.minimum(np.searchsorted(rewritten, pages), len(rewritten) - 1)
            elsewhere |= rewritten[found] == pages
        if not elsewhere.any():
            return {}
        ran = np.sort(rips[elsewhere])
        distinct = ran[np.concatenate(([True], ran[1:] != ran[:-1]))]
        return {addr: self.decisions.code_at(addr) for addr in distinct.tolist()}

    def emulate(self, begin: int, until: int, count: int, control: Control) -> None:
        """`emu_start` for the unrecorded passes (fast-forward, discovery), switching
        threads (`drive`): a stopping signal (Ctrl-C, SIGTERM, SIGHUP) stops the
        emulation and raises `Interrupted`, so the command unwinds and removes its
        temporary file."""
        with _signals_stop(self.uc._uch) as interrupted:
            self.drive(begin, until, count, control, interrupted)
        if interrupted[0]:
            raise Interrupted(interrupted[0])

    def native_control(self) -> Control:
        """`Control` over the C core, whichever mode it is attached in."""
        assert self.native is not None
        core = self.native.core

        def set_previous(rip: int) -> None:
            core.previous_rip = rip

        return Control(
            lambda: int(core.step),
            lambda: int(core.previous_rip),
            set_previous,
            lambda: int(core.stop) != 0,
            core.settle,
        )

    # --- threads ----------------------------------------------------------------------

    def drive(
        self, begin: int, until: int, count: int, control: Control, interrupted: list[int]
    ) -> None:
        """Run from `begin` until `until` (0: no such address), at most `count` steps
        (0: no limit), one thread at a time (threads.py).

        Each `emu_start` runs the current thread until it blocks, yields or exits
        (the `syscall` hook asks for a switch and stops after that instruction),
        or for `slice` instructions while another thread is alive (unicorn's
        instruction count stops before the next one); then the scheduler picks
        the next thread and its CPU state is put in. A process that never makes
        a thread runs in one `emu_start`, as before threads existed."""
        threads = self.kernel.threads
        rip = begin
        while True:
            budget = threads.slice if threads is not None and threads.several() else 0
            limited = False
            if count:
                left = count - control.step()
                if left <= 0:
                    return
                if not budget or left <= budget:
                    budget, limited = left, True
            self.uc.emu_start(rip, until, 0, budget)
            if threads is None or self.kernel.stop is not None or self._interrupt is not None:
                return
            if control.stopped() or interrupted[0]:
                return
            rip = int(self.uc.reg_read(x86.UC_X86_REG_RIP))
            if threads.reslice and not threads.switch_wanted:
                threads.reslice = False  # a new thread: the caller goes on, now in slices
                continue
            threads.reslice = False
            slice_ended = budget and not limited and rip != until
            if not (threads.switch_wanted or slice_ended):
                return
            if not self._switch(control, rip):
                return
            rip = int(self.uc.reg_read(x86.UC_X86_REG_RIP))

    def _switch(self, control: Control, rip: int) -> bool:
        """Put the next thread's CPU in; False when none can run (a deadlock)."""
        threads = self.kernel.threads
        assert threads is not None
        current = threads.current
        control.settle(rip)
        chosen = threads.pick()
        if chosen is None:
            self._interrupt = Stop("deadlock", -1, threads.deadlock())
            return False
        if chosen is not current:
            if current.state != EXITED:
                current.context = self.uc.context_save()
                current.previous_rip = control.previous_rip()
            self.uc.context_restore(chosen.context)
            chosen.context = None
            for register, value in chosen.start.items():
                self.uc.reg_write(register, value)
            chosen.start = {}
            control.set_previous_rip(chosen.previous_rip)
            threads.current = chosen
            self.thread_runs.append((control.step(), chosen.number))
        if chosen.result is not None:  # the answer of the call it blocked in
            self.uc.reg_write(x86.UC_X86_REG_RAX, chosen.result & MASK64)
            chosen.result = None
        return True

    def thread_column(self, first_step: int, rows: int) -> bytes:
        """The `thread` of rows `first_step ..< first_step + rows` (uint16 LE)."""
        runs = self.thread_runs
        if len(runs) == 1 and runs[0][1] == 1:
            return b""
        starts = np.fromiter((step for step, _ in runs), dtype=np.int64)
        numbers = np.fromiter((number for _, number in runs), dtype="<u2")
        steps = np.arange(first_step, first_step + rows, dtype=np.int64)
        return numbers[np.searchsorted(starts, steps, side="right") - 1].tobytes()

    def run(
        self,
        max_steps: int,
        chunk_rows: int,
        on_chunk: Callable[[Chunk], None],
    ) -> RunResult:
        uc = self.uc
        initial = self.registers()

        threads = self.kernel.threads
        self.thread_runs = [(0, threads.current.number if threads is not None else 1)]

        def hand_over(first_step: int, registers: bytes, events: list[MemEvent] | bytes) -> bool:
            """A chunk of rows to the caller; False when the run must stop (a limit)."""
            chunk = Chunk(first_step, registers, events)
            chunk.code = self.run_code(chunk.by_register()[_RIP])
            chunk.threads = self.thread_column(first_step, chunk.rows)
            on_chunk(chunk)
            return self._interrupt is None

        hooks: PythonRecording | NativeRecording
        if self.native is not None:
            hooks = NativeRecording(self.native, self.rules, max_steps, chunk_rows, hand_over)
        else:
            hooks = PythonRecording(uc, self.rules, max_steps, chunk_rows, hand_over)

        def kernel_write(addr: int, data: bytes) -> None:
            """A write by a system call: into memory, and into the log as the call's writes."""
            self._kernel_write(addr, data)
            step = hooks.step()
            for offset in range(0, len(data), WORD):
                piece = data[offset : offset + WORD]
                value = int.from_bytes(piece, "little", signed=True)
                hooks.add_event((step - 1, MEM_WRITE, addr + offset, len(piece), value))

        self.kernel.write_memory = kernel_write
        self._step_now = lambda: hooks.step() - 1
        self._rip_now = hooks.previous_rip
        stop: Stop | None = None
        if self.native is not None:
            control = replace(self.native_control(), stopped=hooks.stopped)
        else:
            assert isinstance(hooks, PythonRecording)
            control = Control(
                hooks.step,
                hooks.previous_rip,
                hooks.set_previous_rip,
                hooks.stopped,
                self.rules.answer_pending,
            )
        hooks.attach()
        with _signals_stop(uc._uch) as interrupted:
            try:
                self.drive(initial["rip"], self.spec.sentinel or 0, 0, control, interrupted)
            except UcError as exc:
                stop = self._interrupt or self._fault_stop(exc, hooks.step() - 1, hooks.drop_writes)
            finally:
                hooks.detach()
                self.kernel.write_memory = self._kernel_write
        hooks.raise_error()
        last_step, last_rip = hooks.step() - 1, hooks.previous_rip()
        if hooks.stop_kind == NATIVE_MAX_STEPS:
            stop = Stop("max_steps", last_step, f"stopped after {max_steps} steps")
        elif hooks.stop_kind == NATIVE_SPIN:
            stop = Stop("spin", last_step, f"the instruction at {last_rip:#x} jumps to itself")
        stop = self._why_stopped(stop, last_step, last_rip)
        final = self.registers()
        step_count = hooks.step()
        hooks.flush()
        return RunResult(
            stop=stop,
            steps=step_count,
            initial=initial,
            final=final,
            stdout=bytes(self.kernel.stdout),
            stderr=bytes(self.kernel.stderr),
            interrupted=interrupted[0],
            syscalls=list(self.kernel.log),
            stdout_dropped=self.kernel.dropped[1],
            stderr_dropped=self.kernel.dropped[2],
            threads=threads.metadata() if threads is not None and len(threads.all) > 1 else [],
        )

    def _why_stopped(self, stop: Stop | None, last_step: int, last_rip: int) -> Stop:
        """The run's stop: the recording hooks', an exception's, the kernel's, or what
        the machine was left at (a return to the sentinel, hlt)."""
        stop = stop or self._interrupt
        if stop is None and self.kernel.stop is not None:
            stop = Stop(self.kernel.stop.reason, -1, self.kernel.stop.detail)
        if stop is None:
            return self._natural_stop(last_step, last_rip)
        if stop.step < 0:  # set by a hook that does not count steps
            stop.step = last_step
        return stop

    def _natural_stop(self, last_step: int, last_rip: int) -> Stop:
        rip = int(self.uc.reg_read(x86.UC_X86_REG_RIP))
        if self.spec.sentinel is not None and rip == self.spec.sentinel:
            if self.spec.stop_at is not None:
                return Stop("halted", last_step, f"reached {self.spec.stop_at} (--to)")
            return Stop("returned", last_step, "the entry function returned")
        try:
            at_last = self.read(last_rip, 1) if last_rip >= 0 else b""
        except UcError:
            at_last = b""
        if at_last == bytes([_HLT]):
            return Stop("halted", last_step, f"hlt at {last_rip:#x}")
        if rip == 0 and self.spec.sentinel is None and not self._mapped(0):
            # emu_start's `until` is 0 when there is no sentinel, and unicorn stops
            # there silently: a jump or ret to address 0 is the CPU's page fault (SIGSEGV).
            return Stop(
                "fault",
                last_step,
                f"{_FAULT_ACCESS[UC_MEM_FETCH_UNMAPPED]} memory: 1 bytes at 0x0 (rip 0x0)",
            )
        return Stop("halted", last_step, f"emulation ended at {rip:#x}")

    def _mapped(self, address: int) -> bool:
        try:
            self.read(address, 1)
        except UcError:
            return False
        return True

    def _fault_stop(self, exc: UcError, last_step: int, drop_writes: Callable[[int], None]) -> Stop:
        rip = int(self.uc.reg_read(x86.UC_X86_REG_RIP))
        if self._fault is None:
            if exc.errno == UC_ERR_INSN_INVALID:
                return Stop("fault", last_step, f"invalid instruction at {rip:#x}")
            return Stop("fault", last_step, f"{exc} at rip {rip:#x}")
        access, address, size = self._fault
        what = _FAULT_ACCESS.get(access, "access to")
        # The write hook saw the write before unicorn refused it: it never happened.
        if access in (UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT):
            drop_writes(last_step)
        return Stop(
            "fault", last_step, f"{what} memory: {size} bytes at {address:#x} (rip {rip:#x})"
        )


def _read_pages(uc: Uc, begin: int, size: int) -> npt.NDArray[np.uint64]:
    """`size` bytes of memory at `begin` (whole pages), read into one array of a row
    of words per page (compared a word at a time: bytes took 4x as long)."""
    pages = np.empty((size // PAGE, PAGE // WORD), dtype=np.uint64)
    at = pages.ctypes.data_as(ctypes.POINTER(ctypes.c_char))
    status = uclib.uc_mem_read(uc._uch, begin, at, size)
    if status != UC_ERR_OK:
        raise UcError(status, begin, size)
    return pages


def _write_pages(uc: Uc, begin: int, pages: npt.NDArray[np.uint64]) -> None:
    """Rows of `_read_pages` back into memory at `begin`."""
    at = pages.ctypes.data_as(ctypes.POINTER(ctypes.c_char))
    status = uclib.uc_mem_write(uc._uch, begin, at, pages.nbytes)
    if status != UC_ERR_OK:
        raise UcError(status, begin, pages.nbytes)


def _runs(pages: npt.NDArray[np.intp]) -> list[tuple[int, int]]:
    """(first, count) of each run of consecutive page numbers in sorted `pages`."""
    if not len(pages):
        return []
    breaks = np.flatnonzero(np.diff(pages) != 1)
    firsts = pages[np.concatenate(([0], breaks + 1))].tolist()
    lasts = pages[np.concatenate((breaks, [len(pages) - 1]))].tolist()
    return [(first, last - first + 1) for first, last in zip(firsts, lasts, strict=True)]


def _copy_pages(source: Uc, target: Uc, begin: int, size: int) -> None:
    """`size` bytes of memory at `begin` (whole pages, mapped in both) from one
    machine to the other, through one buffer; the pages still all zero are left
    out (the target's are zero already): most of the 8 MiB stack, untouched."""
    pages = np.empty(size, dtype=np.uint8)
    at = pages.ctypes.data_as(ctypes.POINTER(ctypes.c_char))
    status = uclib.uc_mem_read(source._uch, begin, at, size)
    if status != UC_ERR_OK:
        raise UcError(status, begin, size)
    used = np.flatnonzero(pages.reshape(-1, PAGE).any(axis=1))
    if not len(used):
        return
    # Runs of consecutive used pages, each written at once.
    breaks = np.flatnonzero(np.diff(used) != 1)
    for first, last in zip(
        used[np.concatenate(([0], breaks + 1))].tolist(),
        used[np.concatenate((breaks, [len(used) - 1]))].tolist(),
        strict=True,
    ):
        offset, length = first * PAGE, (last - first + 1) * PAGE
        status = uclib.uc_mem_write(
            target._uch, begin + offset, ctypes.byref(at.contents, offset), length
        )
        if status != UC_ERR_OK:
            raise UcError(status, begin + offset, length)


@contextmanager
def _signals_stop(uch: Any) -> Iterator[list[int]]:
    """Ctrl-C raised inside a ctypes callback would be printed and ignored:
    stop the emulation instead. SIGTERM (`timeout`, a cancelled CI job) and
    SIGHUP too, or they would kill the process and leave the temporary trace
    file. Only the main thread may set handlers. Yields [the signal's number],
    0 while none arrived, so the caller can exit with 128 + that number.

    SIGALRM too when a Python handler waits for it (pytest-timeout's: its
    exception, raised inside a callback, was printed and ignored, and a hung
    recording ran on): the emulation stops, and that handler then runs here,
    outside the callback, where what it raises propagates."""
    interrupted = [0]

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        interrupted[0] = signum
        _emu_stop(uch)

    in_main_thread = threading.current_thread() is threading.main_thread()
    stopping_signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP] if in_main_thread else []
    if in_main_thread and callable(signal.getsignal(signal.SIGALRM)):
        stopping_signals.append(signal.SIGALRM)
    previous = {number: signal.signal(number, on_signal) for number in stopping_signals}
    try:
        yield interrupted
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        alarm = previous.get(signal.SIGALRM)
        if interrupted[0] == signal.SIGALRM and callable(alarm):
            alarm(signal.SIGALRM, None)  # pytest-timeout: raises its Failed from here
