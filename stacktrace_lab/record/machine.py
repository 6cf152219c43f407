"""The emulated machine: unicorn behind one class, built from parts.

- memory: a `MachineSpec` says what to map (`Mapping`s with their bytes) and
  what the trace calls each range (`Region`s); a front end (a scenario, an
  ELF program) writes the spec, the machine does not know which;
- the CPU model (`cpu.py`): fixed cpuid, rdtsc, rdrand... answers;
- the kernel (`syscalls.py`): the system calls, logged;
- the recording hooks (`run`): the per-step path, kept tight.

Per executed instruction the hooks append raw bytes and tuples to columnar
buffers; turning them into Arrow arrays happens once per chunk of steps, in
`record/columns.py`. The hooks are ctypes callbacks registered directly with
unicorn's C library: the binding's own `hook_add` and `reg_read` wrap every
call in several Python frames, which costs more than the recording itself
(measured in benchmarks/, see docs/performance.md).

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

import ctypes
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import unicorn.x86_const as x86
from unicorn import (
    UC_ARCH_X86,
    UC_ERR_INSN_INVALID,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_INVALID,
    UC_HOOK_MEM_READ_AFTER,
    UC_HOOK_MEM_WRITE,
    UC_MEM_FETCH_PROT,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_READ_PROT,
    UC_MEM_READ_UNMAPPED,
    UC_MEM_WRITE,
    UC_MEM_WRITE_PROT,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_64,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
)
from unicorn.unicorn_py3.arch.types import uc_hook_h
from unicorn.unicorn_py3.unicorn import (
    HOOK_CODE_CFUNC,
    HOOK_MEM_ACCESS_CFUNC,
    HOOK_MEM_INVALID_CFUNC,
    Uc,
    UcError,
    uclib,
)

from ..arch import REGISTERS, WORD
from ..layout import Region
from ..safe_output import Interrupted
from ..trace.format import SyscallRecord
from .cpu import CpuModel
from .syscalls import BareKernel
from .user_mode import hook_privileged, privileged_instructions

UC_IDS = tuple(getattr(x86, f"UC_X86_REG_{name.upper()}") for name in REGISTERS)
ROW_BYTES = WORD * len(REGISTERS)
MEM_WRITE = UC_MEM_WRITE
_HLT = 0xF4

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
#: Instructions run before recording starts (`--from`) at most.
FAST_FORWARD_LIMIT = 200_000_000

# The binding declares argtypes on uclib's functions, and converting arguments
# through them costs more than the call. The same library loaded again without
# prototypes takes the prepared ctypes objects as they are.
_raw = ctypes.CDLL(uclib._name)
_reg_read_batch = _raw.uc_reg_read_batch
_emu_stop = _raw.uc_emu_stop

#: (step, access, address, size, value) as the memory hook saw it.
MemEvent = tuple[int, int, int, int, int]


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
    registers: bytes  # ROW_BYTES per row: REGISTERS as little-endian uint64
    events: list[MemEvent]

    @property
    def rows(self) -> int:
        return len(self.registers) // ROW_BYTES


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


def _add_raw_hook(uch: Any, hook_type: int, callback: Any) -> Any:
    """Register a ctypes callback straight with unicorn's C library (see the module doc)."""
    handle = uc_hook_h()
    status = uclib.uc_hook_add(
        uch, ctypes.byref(handle), hook_type, callback, None, ctypes.c_uint64(1), ctypes.c_uint64(0)
    )
    if status != 0:
        raise UcError(status)
    return handle


class Machine:
    """One emulated run. `run()` calls `on_chunk` every `chunk_rows` steps and at the end."""

    def __init__(self, spec: MachineSpec) -> None:
        self.spec = spec
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        map_memory(self.uc, spec.mappings, spec.memory)
        for name, value in spec.registers.items():
            self.uc.reg_write(UC_IDS[REGISTERS.index(name)], value)
        self.uc.reg_write(x86.UC_X86_REG_RIP, spec.entry)
        self.kernel = spec.kernel()
        self.kernel.max_output = spec.max_output
        self.cpu = spec.cpu()
        executable = [(m.data_at, m.data) for m in spec.mappings if "x" in m.perms and m.data]
        self.cpu.install(self.uc, executable)
        self._executable = executable
        self._privileged_found: dict[int, str] | None = None
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
        _add_raw_hook(self.uc._uch, UC_HOOK_MEM_INVALID, self._invalid)

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

    # --- hooks every run has --------------------------------------------------------

    def _on_syscall(self, uc: Uc, _user: Any) -> None:
        # The CPU's own part of `syscall`, which unicorn skips once a hook
        # handles the call: rcx = the next instruction, r11 = rflags (Linux
        # gives both back unchanged). Found by the silicon check (docs/silicon.md).
        rip = uc.reg_read(x86.UC_X86_REG_RIP)  # the `syscall` itself, 2 bytes
        uc.reg_write(x86.UC_X86_REG_RCX, rip + 2)
        uc.reg_write(x86.UC_X86_REG_R11, uc.reg_read(x86.UC_X86_REG_EFLAGS))
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

    def _on_privileged(self, detail: str) -> None:
        self.request_stop("fault", detail)

    def _privileged(self) -> dict[int, str]:
        """Every privileged instruction of the executable code (user_mode.py),
        found once for the fast-forward and the recorded run alike."""
        if self._privileged_found is None:
            self._privileged_found = {}
            for base, code in self._executable:
                self._privileged_found.update(privileged_instructions(code, base))
        return self._privileged_found

    def _on_invalid(
        self, _handle: Any, access: int, address: int, size: int, _value: int, _user: Any
    ) -> bool:
        self._fault = (access, address, size)
        return False

    # --- running ------------------------------------------------------------------------

    def fast_forward(self, until: int, limit: int = FAST_FORWARD_LIMIT) -> Stop | None:
        """Run without recording until rip == `until` (for `--from`). None when it got
        there (`fast_forwarded` says after how many instructions); else why it stopped."""
        counter = ctypes.c_uint64()
        previous = [-1]
        uc = self.uc

        # Only a counter: a few hundred nanoseconds an instruction, against the
        # recording hooks' microseconds. It counts as `run` counts steps: not
        # unicorn's extra entry into a finished `rep` (see `run`).
        def count(_handle: Any, address: int, _size: int, _user: Any) -> None:
            if address == previous[0] and _is_rep_reentry(uc, address):
                return
            previous[0] = address
            counter.value += 1

        callback = HOOK_CODE_CFUNC(count)
        handle = _add_raw_hook(self.uc._uch, UC_HOOK_CODE, callback)
        # The CPU is in user mode before the first recorded step too; these
        # hooks go again afterwards, as `run` adds its own behind its code hook.
        privileged = hook_privileged(uc, self._privileged(), self._on_privileged)
        try:
            with interruptible(self.uc._uch):
                self.uc.emu_start(self.spec.entry, until, 0, limit)
        except UcError as exc:
            return self._fault_stop(exc, -1, [])
        finally:
            uclib.uc_hook_del(self.uc._uch, handle)
            for hook in privileged:
                self.uc.hook_del(hook)
            self.fast_forwarded = counter.value
        if self.kernel.stop is not None:
            return Stop(self.kernel.stop.reason, -1, self.kernel.stop.detail)
        if self._interrupt is not None:
            return self._interrupt
        rip = int(self.uc.reg_read(x86.UC_X86_REG_RIP))
        if rip != until:
            return Stop("max_steps", -1, f"not reached after {limit} instructions")
        # Blocks translated so far have no recording hooks: translate them again.
        self.uc.ctl_remove_cache(0, (1 << 48) - 1)
        return None

    def run(
        self,
        max_steps: int,
        chunk_rows: int,
        on_chunk: Callable[[Chunk], None],
    ) -> RunResult:
        uc = self.uc
        uch = uc._uch
        n_regs, reg_ids, values, pointers = _register_buffers()
        read_batch = _reg_read_batch
        emu_stop = _emu_stop

        registers = bytearray()
        events: list[MemEvent] = []
        append_event = events.append
        initial = self.registers()
        start_rip = initial["rip"]
        step = 0
        chunk_start = 0
        previous_rip = -1
        previous_row = b""
        next_check = min(chunk_rows, max_steps)
        stop: Stop | None = None
        error: BaseException | None = None

        def flush() -> None:
            nonlocal registers, events, append_event, chunk_start, previous_row
            if registers:
                previous_row = bytes(registers[-ROW_BYTES:])
                on_chunk(Chunk(chunk_start, bytes(registers), events))
            chunk_start = step
            registers = bytearray()
            events = []
            append_event = events.append

        def at_check() -> bool:
            """Every `chunk_rows` steps: hand the chunk over; at `max_steps`: stop."""
            nonlocal next_check, stop, error
            try:
                if step >= max_steps:
                    stop = Stop("max_steps", step - 1, f"stopped after {max_steps} steps")
                    emu_stop(uch)
                    return False
                flush()
                if self._interrupt is not None:  # on_chunk asked to stop (a limit)
                    emu_stop(uch)
                    return False
                next_check = min(step + chunk_rows, max_steps)
            except BaseException as exc:  # a ctypes callback must not raise
                error = exc
                emu_stop(uch)
                return False
            return True

        def is_spin() -> bool:
            """Same rip, same registers and nothing written: a jump to itself."""
            last = bytes(registers[-ROW_BYTES:]) if registers else previous_row
            if bytes(values) != last:
                return False
            for event in reversed(events):
                if event[0] != step - 1:
                    break
                if event[1] == MEM_WRITE:
                    return False
            return True

        # The per-step path: one batch register read, one append, one compare.
        def on_code(_handle: Any, address: int, _size: int, _user: Any) -> None:
            nonlocal step, previous_rip, stop
            if step == next_check and not at_check():
                return
            read_batch(uch, reg_ids, pointers, n_regs)
            if address == previous_rip and is_spin():
                stop = Stop("spin", step - 1, f"the instruction at {address:#x} jumps to itself")
                emu_stop(uch)
                return
            if address == previous_rip and values[_RCX] == 0 and _is_rep_string(uc, address):
                # unicorn enters a `rep` string instruction once more after its
                # last iteration, to find rcx == 0 and do nothing. The CPU
                # retires the last iteration without that step (single-stepped,
                # it traps once per iteration): `rep stosb` with rcx = 3 is 3
                # steps, not 4. Not a row. (A rep reached with rcx == 0 from
                # elsewhere does run once on the CPU, and is one.)
                return
            registers.extend(values)
            previous_rip = address
            step += 1

        def on_memory(
            _handle: Any, access: int, address: int, size: int, value: int, _user: Any
        ) -> None:
            append_event((step - 1, access, address, size, value))

        def kernel_write(addr: int, data: bytes) -> None:
            """A write by a system call: into memory, and into the log as the call's writes."""
            uc.mem_write(addr, data)
            for offset in range(0, len(data), WORD):
                piece = data[offset : offset + WORD]
                value = int.from_bytes(piece, "little", signed=True)
                append_event((step - 1, MEM_WRITE, addr + offset, len(piece), value))

        self.kernel.write_memory = kernel_write
        self._step_now = lambda: step - 1
        self._rip_now = lambda: previous_rip
        self._code_hook = HOOK_CODE_CFUNC(on_code)
        self._memory_hook = HOOK_MEM_ACCESS_CFUNC(on_memory)
        _add_raw_hook(uch, UC_HOOK_CODE, self._code_hook)
        # User mode: privileged instructions stop the run with #GP before they
        # execute (user_mode.py). Added after the code hook above, which unicorn
        # calls first, so the faulting instruction's row is recorded.
        hook_privileged(uc, self._privileged(), self._on_privileged)
        _add_raw_hook(uch, UC_HOOK_MEM_WRITE | UC_HOOK_MEM_READ_AFTER, self._memory_hook)

        with _signals_stop(uch) as interrupted:
            try:
                uc.emu_start(start_rip, self.spec.sentinel or 0)
            except UcError as exc:
                stop = stop or self._interrupt or self._fault_stop(exc, step - 1, events)
        if error is not None:
            raise error
        stop = self._why_stopped(stop, step - 1, previous_rip)
        final = self.registers()
        step_count = step
        flush()
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
        return Stop("halted", last_step, f"emulation ended at {rip:#x}")

    def _fault_stop(self, exc: UcError, last_step: int, events: list[MemEvent]) -> Stop:
        rip = int(self.uc.reg_read(x86.UC_X86_REG_RIP))
        if self._fault is None:
            if exc.errno == UC_ERR_INSN_INVALID:
                return Stop("fault", last_step, f"invalid instruction at {rip:#x}")
            return Stop("fault", last_step, f"{exc} at rip {rip:#x}")
        access, address, size = self._fault
        what = _FAULT_ACCESS.get(access, "access to")
        # The write hook saw the write before unicorn refused it: it never happened.
        if access in (UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT):
            while events and events[-1][0] == last_step and events[-1][1] == MEM_WRITE:
                events.pop()
        return Stop(
            "fault", last_step, f"{what} memory: {size} bytes at {address:#x} (rip {rip:#x})"
        )


def _register_buffers() -> tuple[int, Any, Any, Any]:
    """(count, register ids, values, pointers to each value): what one
    `uc_reg_read_batch` call reads every register into, prepared once."""
    n_regs = len(UC_IDS)
    reg_ids = (ctypes.c_int * n_regs)(*UC_IDS)
    values = (ctypes.c_uint64 * n_regs)()
    base = ctypes.addressof(values)
    pointers = (ctypes.c_void_p * n_regs)(*[base + WORD * i for i in range(n_regs)])
    return n_regs, reg_ids, values, pointers


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


@contextmanager
def interruptible(uch: Any) -> Iterator[None]:
    """`_signals_stop` for a run that records nothing (fast-forward, discovery): a
    stopping signal stops the engine, then is raised as `Interrupted`."""
    with _signals_stop(uch) as interrupted:
        yield
    if interrupted[0]:
        raise Interrupted(interrupted[0])


_RCX = REGISTERS.index("rcx")
#: String instructions a rep/repe/repne prefix repeats (ins, movs, outs, cmps, stos, lods, scas).
_STRING_OPCODES = frozenset((0x6C, 0x6D, 0x6E, 0x6F, *range(0xA4, 0xA8), *range(0xAA, 0xB0)))
_LEGACY_PREFIXES = frozenset((0xF0, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67))


def _is_rep_reentry(uc: Uc, address: int) -> bool:
    """At an instruction that follows itself: unicorn's extra entry into a finished rep."""
    return int(uc.reg_read(x86.UC_X86_REG_RCX)) == 0 and _is_rep_string(uc, address)


def _is_rep_string(uc: Uc, address: int) -> bool:
    """Whether the instruction at `address` is a rep-prefixed string instruction.

    Runs only when an instruction follows itself, so decoding prefixes by hand
    here costs nothing on the per-step path. (An 0x67 prefix would count in
    ecx; the rcx == 0 test above is then conservative: no row is dropped.)
    """
    rep = False
    try:
        code = bytes(uc.mem_read(address, 15))
    except UcError:  # the instruction ends close to unmapped memory
        code = bytes(uc.mem_read(address, -address % 0x1000 or 0x1000))
    for byte in code:
        if byte in (0xF2, 0xF3):
            rep = True
        elif byte in _LEGACY_PREFIXES or 0x40 <= byte <= 0x4F:  # REX last, but harmless
            continue
        else:
            return rep and byte in _STRING_OPCODES
    return False
