"""The emulated machine: unicorn behind one class, with the recording hooks.

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
from collections.abc import Callable
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
from .user_mode import hook_privileged

UC_IDS = tuple(getattr(x86, f"UC_X86_REG_{name.upper()}") for name in REGISTERS)
ROW_BYTES = WORD * len(REGISTERS)
MEM_WRITE = UC_MEM_WRITE

SYS_WRITE, SYS_EXIT, SYS_EXIT_GROUP = 1, 60, 231
#: Names for the trace's syscall log; a number not here is logged as "unknown".
SYSCALL_NAMES = {SYS_WRITE: "write", SYS_EXIT: "exit", SYS_EXIT_GROUP: "exit_group"}
#: Argument registers of a Linux x86-64 system call, in order.
_SYSCALL_ARGS = (
    x86.UC_X86_REG_RDI,
    x86.UC_X86_REG_RSI,
    x86.UC_X86_REG_RDX,
    x86.UC_X86_REG_R10,
    x86.UC_X86_REG_R8,
    x86.UC_X86_REG_R9,
)
ENOSYS, EBADF, EFAULT = 38, 9, 14
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


@dataclass(frozen=True)
class SyscallEvent:
    """A system call as the trace's `syscalls` log holds it."""

    step: int  # the row of the `syscall` instruction
    nr: int
    name: str
    args: tuple[int, ...]
    result: int | None  # rax after the call, signed; None: it did not return


@dataclass
class RunResult:
    stop: Stop
    steps: int
    initial: dict[str, int]
    final: dict[str, int]
    stdout: bytes
    stderr: bytes
    interrupted: bool = False
    #: Output bytes written past `MachineSpec.max_output` and not kept.
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    syscalls: list[SyscallEvent] = field(default_factory=list)


@dataclass
class MachineSpec:
    code: bytes
    code_region: Region
    regions: list[Region]
    entry: int
    #: Registers set before the first step, beyond the defaults (rsp, rip).
    registers: dict[str, int] = field(default_factory=dict)
    #: Memory written before the first step (the sentinel return address).
    memory: dict[int, bytes] = field(default_factory=dict)
    #: Where a return to the sentinel lands; reaching it ends the run.
    sentinel: int = 0
    #: Bytes of stdout and of stderr kept; the rest is counted (limits.py).
    max_output: int = 1 << 20


class Machine:
    """One emulated run. `run()` calls `on_chunk` every `chunk_rows` steps and at the end."""

    def __init__(self, spec: MachineSpec) -> None:
        self.spec = spec
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        for region in [spec.code_region, *spec.regions]:
            perms = 0
            for ch in region.perms:
                perms |= _PERMS.get(ch, 0)
            self.uc.mem_map(region.map_start, region.map_size, perms)
        self.uc.mem_write(spec.code_region.base, spec.code)
        for addr, data in spec.memory.items():
            self.uc.mem_write(addr, data)
        for name, value in spec.registers.items():
            self.uc.reg_write(UC_IDS[REGISTERS.index(name)], value)
        self.uc.reg_write(x86.UC_X86_REG_RIP, spec.entry)
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.dropped = {1: 0, 2: 0}  # output bytes past max_output, by fd
        self.syscalls: list[SyscallEvent] = []
        self._stop: Stop | None = None
        self._fault: tuple[int, int, int] | None = None  # access, address, size
        self._error: BaseException | None = None

    def request_stop(self, reason: str, detail: str) -> None:
        """Stop the run from a callback (a limit reached); the steps so far are kept."""
        if self._stop is None:
            self._stop = Stop(reason, -1, detail)
        self.uc.emu_stop()

    def registers(self) -> dict[str, int]:
        return {
            name: int(self.uc.reg_read(uid)) for name, uid in zip(REGISTERS, UC_IDS, strict=True)
        }

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(addr, size))

    def run(
        self,
        max_steps: int,
        chunk_rows: int,
        on_chunk: Callable[[Chunk], None],
    ) -> RunResult:
        uc = self.uc
        uch = uc._uch
        n_regs = len(UC_IDS)
        reg_ids = (ctypes.c_int * n_regs)(*UC_IDS)
        values = (ctypes.c_uint64 * n_regs)()
        base = ctypes.addressof(values)
        pointers = (ctypes.c_void_p * n_regs)(*[base + WORD * i for i in range(n_regs)])
        read_batch = _reg_read_batch
        emu_stop = _emu_stop

        registers = bytearray()
        events: list[MemEvent] = []
        append_event = events.append
        initial = self.registers()
        step = 0
        chunk_start = 0
        previous_rip = -1
        previous_row = b""
        next_check = min(chunk_rows, max_steps)

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
            nonlocal next_check
            try:
                if step >= max_steps:
                    self._stop = Stop("max_steps", step - 1, f"stopped after {max_steps} steps")
                    emu_stop(uch)
                    return False
                flush()
                if self._stop is not None:  # on_chunk asked to stop (a limit reached)
                    emu_stop(uch)
                    return False
                next_check = min(step + chunk_rows, max_steps)
            except BaseException as exc:  # a ctypes callback must not raise
                self._error = exc
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

        def on_code(_handle: Any, address: int, _size: int, _user: Any) -> None:
            nonlocal step, previous_rip
            if step == next_check and not at_check():
                return
            read_batch(uch, reg_ids, pointers, n_regs)
            if address == previous_rip and is_spin():
                self._stop = Stop(
                    "spin", step - 1, f"the instruction at {address:#x} jumps to itself"
                )
                emu_stop(uch)
                return
            registers.extend(values)
            previous_rip = address
            step += 1

        def on_memory(
            _handle: Any, access: int, address: int, size: int, value: int, _user: Any
        ) -> None:
            append_event((step - 1, access, address, size, value))

        def on_invalid(
            _handle: Any, access: int, address: int, size: int, _value: int, _user: Any
        ) -> bool:
            self._fault = (access, address, size)
            return False

        callbacks = [
            (UC_HOOK_CODE, HOOK_CODE_CFUNC(on_code)),
            (UC_HOOK_MEM_WRITE | UC_HOOK_MEM_READ_AFTER, HOOK_MEM_ACCESS_CFUNC(on_memory)),
            (UC_HOOK_MEM_INVALID, HOOK_MEM_INVALID_CFUNC(on_invalid)),
        ]
        for hook_type, callback in callbacks:
            handle = uc_hook_h()
            status = uclib.uc_hook_add(
                uch,
                ctypes.byref(handle),
                hook_type,
                callback,
                None,
                ctypes.c_uint64(1),
                ctypes.c_uint64(0),
            )
            if status != 0:
                raise UcError(status)
        # The syscall hook runs after the code hook counted the `syscall`
        # instruction: its row is `step - 1`, read when the call happens.
        uc.hook_add(
            UC_HOOK_INSN,
            lambda uc, _user: self._on_syscall(uc, step - 1),
            None,
            1,
            0,
            x86.UC_X86_INS_SYSCALL,
        )

        def on_interrupt(uc: Uc, number: int, _user: Any) -> None:
            # Without this hook unicorn only says "Unhandled CPU exception";
            # name the exception and the instruction that raised it.
            name = _EXCEPTIONS.get(number, f"interrupt {number:#x}")
            self._stop = Stop("fault", -1, f"{name} at {previous_rip:#x}")
            uc.emu_stop()

        uc.hook_add(UC_HOOK_INTR, on_interrupt)

        def on_privileged(detail: str) -> None:
            self._stop = Stop("fault", -1, detail)
            uc.emu_stop()

        # User mode: after the code hook above, so the faulting instruction is a row.
        hook_privileged(uc, self.spec.code, self.spec.code_region.base, on_privileged)

        interrupted = False

        def on_sigint(_signum: int, _frame: FrameType | None) -> None:
            nonlocal interrupted
            interrupted = True
            emu_stop(uch)

        # Ctrl-C raised inside a ctypes callback would be printed and ignored:
        # stop the emulation instead. SIGTERM (`timeout`, a cancelled CI job)
        # too, or it would kill the process and leave the temporary trace file.
        # Only the main thread may set handlers.
        in_main_thread = threading.current_thread() is threading.main_thread()
        stopping_signals = (signal.SIGINT, signal.SIGTERM) if in_main_thread else ()
        previous_handlers = {
            number: signal.signal(number, on_sigint) for number in stopping_signals
        }
        try:
            uc.emu_start(self.spec.entry, self.spec.sentinel)
        except UcError as exc:
            self._stop = self._stop or self._fault_stop(exc, step - 1, events)
        finally:
            for number, handler in previous_handlers.items():
                signal.signal(number, handler)
        if self._error is not None:
            raise self._error
        if self._stop is None:
            self._stop = self._natural_stop(step - 1, previous_rip)
        elif self._stop.step < 0:  # set by the syscall hook, which does not count steps
            self._stop.step = step - 1
        final = self.registers()
        step_count = step
        flush()
        return RunResult(
            stop=self._stop,
            steps=step_count,
            initial=initial,
            final=final,
            stdout=bytes(self.stdout),
            stderr=bytes(self.stderr),
            interrupted=interrupted,
            stdout_dropped=self.dropped[1],
            stderr_dropped=self.dropped[2],
            syscalls=self.syscalls,
        )

    def _natural_stop(self, last_step: int, last_rip: int) -> Stop:
        rip = int(self.uc.reg_read(x86.UC_X86_REG_RIP))
        if rip == self.spec.sentinel:
            return Stop("returned", last_step, "the entry function returned")
        offset = last_rip - self.spec.code_region.base
        if 0 <= offset < len(self.spec.code) and self.spec.code[offset] == _HLT:
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

    def _on_syscall(self, uc: Uc, step: int) -> None:
        number = int(uc.reg_read(x86.UC_X86_REG_RAX))
        args = tuple(int(uc.reg_read(reg)) for reg in _SYSCALL_ARGS)
        self._emulate_syscall(uc, number)
        returned = self._stop is None or self._stop.reason != "exit"
        result = int(uc.reg_read(x86.UC_X86_REG_RAX)) if returned else None
        if result is not None and result >= 1 << 63:
            result -= 1 << 64  # -errno
        name = SYSCALL_NAMES.get(number, "unknown")
        self.syscalls.append(SyscallEvent(step, number, name, args, result))

    def _emulate_syscall(self, uc: Uc, number: int) -> None:
        if number == SYS_WRITE:
            fd = uc.reg_read(x86.UC_X86_REG_RDI)
            buf = uc.reg_read(x86.UC_X86_REG_RSI)
            count = uc.reg_read(x86.UC_X86_REG_RDX)
            result = -EBADF
            # Check the range before reading: a count of 2**63 would allocate
            # the buffer before unicorn refuses the read.
            if fd in (1, 2) and count and not _mapped(uc, buf, count):
                result = -EFAULT
            elif fd in (1, 2):
                # Keep at most max_output bytes of each stream and count the rest:
                # a program writing in a loop must not grow the tool's memory.
                kept = self.stdout if fd == 1 else self.stderr
                room = min(max(self.spec.max_output - len(kept), 0), count)
                if room:
                    kept.extend(uc.mem_read(buf, room))
                self.dropped[fd] += count - room
                result = count
            uc.reg_write(x86.UC_X86_REG_RAX, result & 0xFFFFFFFFFFFFFFFF)
        elif number in (SYS_EXIT, SYS_EXIT_GROUP):
            status = uc.reg_read(x86.UC_X86_REG_RDI) & 0xFF
            name = "exit" if number == SYS_EXIT else "exit_group"
            self._stop = Stop("exit", -1, f"{name}({status})")
            uc.emu_stop()
        else:
            uc.reg_write(x86.UC_X86_REG_RAX, -ENOSYS & 0xFFFFFFFFFFFFFFFF)


def _mapped(uc: Uc, addr: int, size: int) -> bool:
    """Whether `addr ..< addr + size` lies in one mapping (regions have guard pages between)."""
    return any(begin <= addr and addr + size <= last + 1 for begin, last, _ in uc.mem_regions())
