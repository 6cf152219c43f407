"""The native side: run a static x86-64 ELF on the real CPU, one instruction at a time.

fork -> personality(ADDR_NO_RANDOMIZE) -> PTRACE_TRACEME -> execve with a fixed
environment -> at the exec stop: fix the AT_RANDOM bytes, hide the vDSO ->
PTRACE_SINGLESTEP until the program stops, reading the registers (and
fs_base) before every instruction.

Nothing the program does reaches the host (sandbox.py): every system call is
stopped before the kernel runs it, and only those that act on the process
itself run; output is captured from the process's memory, stdin is empty,
the rest is answered as the recorder's machine answers it (-ENOSYS), and a
new thread, process or program ends the run (`unsupported`).

`cpuid` and `xgetbv` are not run either: the stepper decodes every
instruction before it steps it, and answers these from the recorder's CPU
model (record/machine/cpu.py), so the native run takes the code paths the recorder
records (glibc picks its string functions by cpuid), on any host.

What the program learns from outside the CPU is logged so that the emulated
side can be given the same answers: every system call (number, arguments,
result, the buffers it filled), every `cpuid` and every `xgetbv`. Each is
found by decoding the instruction at rip before stepping it (capstone, once
per address); its result is read from the registers after the single step
over it (a single-stepped `syscall` traps once, after the kernel returns).

Rows count instructions as the CPU retires them under single-step: each
iteration of a `rep` string instruction is one step (the CPU traps after
each), and the instruction that `rip` points to when a fetch faults is not a
step (it never ran).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import capstone
import capstone.x86 as cx
import numpy as np

from ..arch import PAGE, REGISTERS
from ..layout import page_ceil
from ..record.linux.elf import ElfImage
from ..record.machine.cpu import RANDOM_VALUE, TSC_START, TSC_STEP, XCR0, CpuModel, full_register
from ..record.machine.syscalls import NAMES, fixed_random
from . import sandbox
from .instructions import Instruction, InstructionTable
from .native_files import NativeFiles
from .ptrace import (
    PTRACE_GETREGS,
    PTRACE_GETSIGINFO,
    PTRACE_O_EXITKILL,
    PTRACE_O_TRACESYSGOOD,
    PTRACE_SETOPTIONS,
    PTRACE_SETREGS,
    PTRACE_SINGLESTEP,
    PTRACE_SYSEMU,
    PTRACE_SYSEMU_SINGLESTEP,
    USER_REGS,
    PtraceError,
    SigInfo,
    UserRegs,
    _raw_ptrace,
    ptrace,
    trace_me_without_aslr,
)

#: glibc picks its string functions by cpuid: without this, natively it takes
#: AVX2/EVEX versions, and the replayed cpuid would send the emulation (which
#: cannot run AVX) down the same path. rseq off: the kernel would write the
#: rseq area behind the program's back, which no replay can reproduce.
GLIBC_TUNABLES = (
    "glibc.cpu.hwcaps=-AVX,-AVX2,-AVX_VNNI,-AVX512F,-AVX512BW,-AVX512CD,-AVX512DQ,-AVX512VL,"
    "-AVX_Fast_Unaligned_Load,-FMA,-FMA4,-BMI1,-BMI2,-LZCNT,-MOVBE,-ERMS,-FSRM,-RTM,-XSAVEC:"
    "glibc.pthread.rseq=0"
)
#: The environment of every native run: nothing from the caller's.
FIXED_ENV = {"LANG": "C", "LC_ALL": "C", "GLIBC_TUNABLES": GLIBC_TUNABLES}
#: What AT_RANDOM points to (glibc's stack guard and pointer guard come from
#: it): the ELF recorder's fixed bytes, the same on every run.
FIXED_AT_RANDOM = fixed_random(16)
AT_NULL, AT_IGNORE, AT_BASE, AT_ENTRY, AT_RANDOM, AT_SYSINFO_EHDR = 0, 1, 7, 9, 25, 33

#: REGISTERS (the trace's column order) as indexes into user_regs_struct.
_ROW_INDEX = np.array([USER_REGS.index("eflags" if r == "rflags" else r) for r in REGISTERS])
_FS_BASE = USER_REGS.index("fs_base")
_RIP = USER_REGS.index("rip")
_RSP = USER_REGS.index("rsp")
_ORIG_RAX_AT = 8 * USER_REGS.index("orig_rax")
#: waitpid's status for "stopped by SIGTRAP" (a single step done): (SIGTRAP << 8) | 0x7f.
_STOPPED_BY_SIGTRAP = (signal.SIGTRAP << 8) | 0x7F
#: ... and "stopped at a system call's entry" (PTRACE_O_TRACESYSGOOD: SIGTRAP | 0x80).
_STOPPED_AT_SYSCALL = ((signal.SIGTRAP | 0x80) << 8) | 0x7F
_TF = 0x100
#: arch_prctl's code for "cpuid faults (SIGSEGV)" when its argument is 0.
_ARCH_SET_CPUID = 0x1012
#: prctl(PR_SET_TSC, PR_TSC_SIGSEGV): rdtsc and rdtscp raise SIGSEGV.
_PRCTL, _PR_SET_TSC, _PR_TSC_ENABLE, _PR_TSC_SIGSEGV = 157, 26, 1, 2
#: CF, PF, AF, ZF, SF, OF; CF alone.
_ARITH_FLAGS, _CF = 0x8D5, 0x1
_MASK64 = (1 << 64) - 1
_RCX, _R11, _EFLAGS = (USER_REGS.index(r) for r in ("rcx", "r11", "eflags"))
_RAX = USER_REGS.index("rax")
_ARG_REGS = tuple(USER_REGS.index(r) for r in ("rdi", "rsi", "rdx", "r10", "r8", "r9"))
_SYS_MMAP, _MAP_FIXED = 9, 0x10
_SYS_BRK, _SYS_MREMAP, _MREMAP_MAYMOVE, _MREMAP_FIXED = 12, 25, 1, 2
_PROT_READ_WRITE, _MAP_PRIVATE_ANONYMOUS = 0x3, 0x22


#: mmap, munmap, brk: what places the process's mappings.
_PLACING = frozenset((9, 11, 12))

#: System calls that fill memory: number -> (argument holding the buffer, its
#: size: an int, "result" for the byte count returned, or ("arg", i)).
OUTPUT_BUFFERS: dict[int, tuple[int, int | str | tuple[str, int]]] = {
    0: (1, "result"),  # read
    4: (1, 144),  # stat
    5: (1, 144),  # fstat
    6: (1, 144),  # lstat
    7: (0, ("arg", 1)),  # poll: the pollfd array (8 bytes each, scaled below)
    13: (2, 32),  # rt_sigaction: old action
    14: (2, ("arg", 3)),  # rt_sigprocmask: old mask
    16: (2, 64),  # ioctl (TCGETS is 60 bytes, TIOCGWINSZ 8)
    17: (1, "result"),  # pread64
    63: (0, 390),  # uname
    89: (1, "result"),  # readlink
    96: (0, 16),  # gettimeofday
    97: (1, 16),  # getrlimit
    131: (1, 24),  # sigaltstack: old stack
    204: (2, "result"),  # sched_getaffinity
    228: (1, 16),  # clock_gettime
    262: (2, 144),  # newfstatat
    267: (2, "result"),  # readlinkat
    302: (3, 16),  # prlimit64: old limit
    318: (0, "result"),  # getrandom
    332: (4, 256),  # statx
}


@dataclass(frozen=True)
class SyscallRecord:
    step: int  # the row of the `syscall` instruction (negative: before the window)
    nr: int
    args: tuple[int, ...]
    result: int  # as the kernel returned it, two's complement in 64 bits
    buffers: tuple[tuple[int, bytes], ...] = ()  # (address, bytes) the call filled
    r11_after: int = 0  # the rflags `syscall` saved in r11 (with the tracer's TF)

    @property
    def name(self) -> str:
        return NAMES.get(self.nr, f"syscall_{self.nr}")

    def to_json(self) -> dict[str, object]:
        return {
            "step": self.step,
            "nr": self.nr,
            "name": self.name,
            "args": list(self.args),
            "result": self.result,
            "buffers": [[addr, data.hex()] for addr, data in self.buffers],
        }


@dataclass(frozen=True)
class CpuidRecord:
    step: int
    leaf: int
    subleaf: int
    eax: int
    ebx: int
    ecx: int
    edx: int


@dataclass(frozen=True)
class XgetbvRecord:
    step: int
    ecx: int
    eax: int
    edx: int


@dataclass(frozen=True)
class ValueRecord:
    """rdtsc, rdtscp, rdrand or rdseed: what the CPU answered (its registers after)."""

    step: int
    mnemonic: str
    #: The general registers and rflags once the instruction ran (trace names).
    after: dict[str, int]


@dataclass(frozen=True)
class NativeStop:
    reason: (
        str  # returned | halted | exit | spin | max_steps | fault | to | not_started | unsupported
    )
    step: int  # the last row
    detail: str


@dataclass
class NativeRun:
    """What the CPU did, one row per retired instruction inside the window."""

    registers: np.ndarray  # (steps, len(REGISTERS)) uint64, the trace's column order
    fs_base: np.ndarray  # (steps,) uint64
    stop: NativeStop
    stdout: bytes
    stderr: bytes
    #: Instructions run before the first row (a start stub, or start-up before
    #: --from); -1: run at full speed to --from, not counted.
    skipped: int
    syscalls: list[SyscallRecord] = field(default_factory=list)
    cpuid: list[CpuidRecord] = field(default_factory=list)
    xgetbv: list[XgetbvRecord] = field(default_factory=list)
    #: Every rdtsc, rdtscp, rdrand and rdseed, in order (replayed by the emulated side).
    values: list[ValueRecord] = field(default_factory=list)
    #: The bytes at every address an instruction ran from (up to 16 of them).
    code: dict[int, bytes] = field(default_factory=dict)
    #: At the exec stop: the registers (trace names, and fs_base) and the
    #: stack from rsp to its top (argc, argv, envp, auxv, strings), as the
    #: kernel built them, AT_RANDOM and the vDSO entry already fixed.
    initial_registers: dict[str, int] = field(default_factory=dict)
    initial_stack: bytes = b""
    #: How far from its linked addresses the kernel loaded the program (a static-pie).
    load_bias: int = 0
    #: Where the kernel put the program's interpreter (AT_BASE; 0: none).
    interp_base: int = 0
    #: The process (and process group) that ran; killed and reaped when the run ended.
    pid: int = 0
    #: row -> [(address, bytes after that row's instruction)]: what a first pass
    #: read where each instruction's memory operands and pushes put their bytes,
    #: or what a second pass read where it was asked to (`read_after`).
    memory: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    #: The instructions at `code`, decoded once (the comparison reuses them).
    instructions: InstructionTable | None = None
    #: row -> (address, size) its instruction certainly stored (a move to memory,
    #: a push or call): the emulator must have written there at that row too.
    stored: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    #: A trace's run: the first row whose system call is not the trace's (row, what differs).
    syscall_difference: tuple[int, str] | None = None

    @property
    def steps(self) -> int:
        return int(self.registers.shape[0])

    @property
    def r11_saved_at_start(self) -> bool:
        """Whether r11 in the first row is still the rflags a syscall before the window saved."""
        before = [s for s in self.syscalls if s.step < 0]
        r11 = REGISTERS.index("r11")
        return bool(before and self.steps and self.registers[0, r11] == before[-1].r11_after)


@dataclass(frozen=True)
class RecordedStart:
    """The recorder's process at its first instruction: what a trace's native run starts from."""

    registers: dict[str, int]  # trace names; rip is where the kernel starts it
    rsp: int
    stack: bytes  # from rsp up: argc, argv, envp, auxv, strings


class NativeError(Exception):
    """The binary could not be started under ptrace."""


_KIND_SYSCALL, _KIND_CPUID, _KIND_XGETBV, _KIND_VALUE, _KIND_HLT, _KIND_PUSHF, _KIND_OTHER = range(
    7
)
#: Instructions whose answer comes from the CPU's counter or random source.
_VALUE_INSTRUCTIONS = {
    capstone.x86.X86_INS_RDTSC: "rdtsc",
    capstone.x86.X86_INS_RDTSCP: "rdtscp",
    capstone.x86.X86_INS_RDRAND: "rdrand",
    capstone.x86.X86_INS_RDSEED: "rdseed",
}
_KINDS = {
    capstone.x86.X86_INS_SYSCALL: _KIND_SYSCALL,
    capstone.x86.X86_INS_CPUID: _KIND_CPUID,
    capstone.x86.X86_INS_XGETBV: _KIND_XGETBV,
    **dict.fromkeys(_VALUE_INSTRUCTIONS, _KIND_VALUE),
    capstone.x86.X86_INS_HLT: _KIND_HLT,
    capstone.x86.X86_INS_PUSHF: _KIND_PUSHF,
    capstone.x86.X86_INS_PUSHFQ: _KIND_PUSHF,
}


def run_native(
    path: str | Path,
    argv: Sequence[str] | None = None,
    *,
    start: int | None = None,
    end: int | None = None,
    sentinel: int | None = None,
    max_steps: int = 1_000_000,
    linked_entry: int | None = None,
    linux: bool = True,
    replay: NativeRun | None = None,
    read_after: dict[int, list[tuple[int, int]]] | None = None,
    fast_forward: bool = False,
    recorded_start: RecordedStart | None = None,
    recorded_syscalls: dict[int, SyscallRecord] | None = None,
    file_view: tuple[ElfImage, ElfImage | None] | None = None,
) -> NativeRun:
    """Single-step `path` natively.

    Rows are recorded from the first time rip reaches `start` (default: the
    first instruction after exec) until `end` is reached (stop `to`), rip
    reaches `sentinel` (stop `returned`), an instruction jumps to itself with
    no change (`spin`), the program exits or faults, or `max_steps` rows.

    `linked_entry`: the entry address `start` and `end` were computed for; a
    static-pie runs wherever the kernel put it, and they move with it
    (`NativeRun.load_bias`).

    `linux`: system calls are answered as the recorder's Linux process answers
    them (a new process stops the run); False: as a scenario's bare machine.

    A second pass (`replay`: the first pass's run) gets the first pass's
    answers to the system calls that do not shape the process (getrandom,
    clock_gettime, ...) and to rdtsc/rdrand, so it runs the same steps; after
    each row in `read_after` it reads those (address, size) ranges of the
    process's memory (`NativeRun.memory`): what the emulator wrote there.

    `fast_forward`: run to `start` at full speed (a breakpoint; system calls
    still go through the sandbox; cpuid faults and is answered from the CPU
    model) where the host has CPUID faulting; `NativeRun.skipped` is then -1.

    A trace's run (`silicon-check TRACE`): `recorded_start` is the recorder's
    initial stack and registers, written over the kernel's at the exec stop;
    `recorded_syscalls` (row -> the trace's call there) answer the calls
    inside the window as the recording was answered (results, filled bytes;
    an mmap goes where the recording's went, MAP_FIXED), and a call whose
    number or arguments differ from the trace's is a difference
    (`NativeRun.syscall_difference`).

    `file_view`: (the program, its interpreter): file system calls are answered
    through the recorder's read-only file view (native_files.py).
    """
    program = str(Path(path).resolve())
    args = list(argv) if argv is not None else [program]
    null = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.fork()
        if pid == 0:  # the child: as little as possible between fork and exec
            try:
                # A process group of its own: a program that signals its group
                # (kill(0, ...)) reaches itself only, not the tool and its shell.
                os.setpgid(0, 0)
                # Empty stdin; stdout and stderr are captured by the tracer from
                # the process's memory at each write (sandbox.py), never written.
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                # No descriptor of the tool's: fcntl or ioctl on one would reach it.
                os.closerange(3, 1 << 16)
                # Every signal at its default, unblocked, as the recorder's process
                # starts: an ignored one survives execve (Python ignores SIGPIPE),
                # and the program would see it in rt_sigaction's old action.
                for signum in signal.valid_signals():
                    with contextlib.suppress(OSError, ValueError):
                        signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                trace_me_without_aslr()
                os.execve(program, args, FIXED_ENV)
            finally:
                os._exit(127)
    finally:
        os.close(null)
    try:
        _, status = os.waitpid(pid, 0)
        if not os.WIFSTOPPED(status):
            code = os.waitstatus_to_exitcode(status)
            raise NativeError(f"{path}: could not start it under ptrace (exit status {code})")
        # EXITKILL: if the tool dies, the kernel kills the program too.
        # TRACESYSGOOD: a system call's entry stop is told apart from a step.
        ptrace(PTRACE_SETOPTIONS, pid, None, PTRACE_O_EXITKILL | PTRACE_O_TRACESYSGOOD)
        stepper = _Stepper(pid, start, end, sentinel, max_steps, linux)
        stepper.fast_forward = fast_forward
        if replay is not None:
            stepper.replay_from(replay, read_after or {})
            stepper.capture_writes = False  # it reads what it is asked to
        stepper.recorded_syscalls = recorded_syscalls
        if file_view is not None:
            stepper.files = NativeFiles(*file_view, stepper.mem, pid)
        try:
            stepper.fix_auxv()
            if linked_entry is not None:
                entry = stepper.at_entry
                stepper.relocate(
                    (entry if entry >= 0 else stepper.initial_registers["rip"]) - linked_entry
                )
            # Where the kernel loaded the program where the recorder does (all but
            # a static-pie, which Linux puts near the stack with ASLR off): the
            # recorder's first stack, and every mapping where its kernel puts it
            # (not under the vDSO, as Linux does): the recording's addresses.
            # Only for a trace's run: the program mode keeps the kernel's start and
            # placement (the emulated side follows them), which the examples
            # test; the recorder's gave Rust's std another stack view.
            if recorded_syscalls is not None and stepper.load_bias:
                # A static-pie, loaded elsewhere than the recorder loads it: moved
                # to the recording's addresses before its first instruction.
                if file_view is None or file_view[1] is not None:
                    raise NativeError(
                        f"{path}: the kernel loads it {stepper.load_bias:#x} away from "
                        "where the recorder did: its trace cannot be compared"
                    )
                stepper.move_program(file_view[0], stepper.load_bias)
            as_recorded = stepper.load_bias == 0 and recorded_syscalls is not None
            if recorded_start is not None and as_recorded:
                stepper.start_as_recorded(recorded_start)
                stepper.answer_start_up_as_recorder = True
            stepper.place_as_recorded = file_view is not None and as_recorded
            if stepper.files is not None:
                stepper.files.own_files = as_recorded
            stepper.run()
        finally:
            os.close(stepper.mem)
    finally:
        _kill(pid)
    stdout, stderr = bytes(stepper.stdout), bytes(stepper.stderr)
    raw = np.frombuffer(bytes(stepper.rows), dtype=np.uint64).reshape(-1, len(USER_REGS))
    return NativeRun(
        registers=np.ascontiguousarray(raw[:, _ROW_INDEX]),
        fs_base=raw[:, _FS_BASE].copy(),
        stop=stepper.stop,
        stdout=stdout,
        stderr=stderr,
        skipped=stepper.skipped,
        syscalls=stepper.syscalls,
        cpuid=stepper.cpuid,
        xgetbv=stepper.xgetbv,
        values=stepper.values,
        code=stepper.code,
        initial_registers=stepper.initial_registers,
        initial_stack=stepper.initial_stack,
        load_bias=stepper.load_bias,
        interp_base=stepper.interp_base,
        pid=pid,
        memory=stepper.memory,
        instructions=stepper.instructions,
        stored=stepper.stored,
        syscall_difference=stepper.syscall_difference,
    )


#: A stack pointer lowered by at most this much in one instruction is a push,
#: call, pushf or enter: the bytes under the old rsp are read after it.
_MAX_PUSHED = 64


def _write_plan(
    insn: Instruction, rip: int
) -> tuple[tuple[int, int, int, int, int, int, int], ...]:
    """The stepper's form of `insn.memory_writes`: user_regs_struct indexes, the
    rip-relative displacement made absolute. An operand on a register the
    stepper does not read is left out (the comparison then runs a second pass)."""
    plan = []
    for op in insn.memory_writes:
        names = (op.base, op.index, op.segment)
        if any(name and name != "rip" and name not in USER_REGS for name in names):
            continue
        displacement = op.displacement + (rip + insn.size if op.base == "rip" else 0)
        plan.append(
            (
                USER_REGS.index(op.base) if op.base and op.base != "rip" else -1,
                USER_REGS.index(op.index) if op.index else -1,
                op.scale,
                displacement,
                USER_REGS.index(op.segment) if op.segment else -1,
                op.size,
                0xFFFFFFFF if op.address_32 else _MASK64,
            )
        )
    return tuple(plan)


#: Instructions that always store to their memory destination (no condition, no
#: count that can be 0): where the CPU stored, the emulator must have written.
_ALWAYS_STORE = frozenset(
    (cx.X86_INS_MOV, cx.X86_INS_MOVAPS, cx.X86_INS_MOVUPS, cx.X86_INS_MOVAPD, cx.X86_INS_MOVUPD,
     cx.X86_INS_MOVDQA, cx.X86_INS_MOVDQU, cx.X86_INS_MOVQ, cx.X86_INS_MOVD)
)  # fmt: skip
_PUSHES = frozenset((cx.X86_INS_PUSH, cx.X86_INS_CALL))


def _certain_stores(
    insn: Instruction, plan: tuple[tuple[int, int, int, int, int, int, int], ...]
) -> tuple[tuple[int, ...], bool] | None:
    """The stores `insn` makes whatever its operands hold: its memory destination
    (index into `plan`) if it is a plain move to memory, and whether it pushes
    (push, call: the bytes under the new rsp). None: none certain."""
    pushes = insn.id in _PUSHES and not insn.rep_string
    destination: tuple[int, ...] = ()
    if insn.id in _ALWAYS_STORE and len(plan) == 1 and len(insn.memory_writes) == 1:
        destination = (0,)
    if not destination and not pushes:
        return None
    return destination, pushes


def _kill(pid: int) -> None:
    """The program and its whole process group (it can start no other: sandbox.py)."""
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


class _Stepper:
    """The single-step loop and what it logs (one instance per run)."""

    def __init__(
        self,
        pid: int,
        start: int | None,
        end: int | None,
        sentinel: int | None,
        max_steps: int,
        linux: bool = True,
    ) -> None:
        self.pid = pid
        self.linux = linux
        #: To `start` at full speed (a breakpoint) rather than single-stepping.
        self.fast_forward = False
        self.start = start
        self.end = end
        self.sentinel = sentinel
        self.max_steps = max_steps
        self.mem = os.open(f"/proc/{pid}/mem", os.O_RDWR)
        self.rows = bytearray()
        self.skipped = 0
        self.syscalls: list[SyscallRecord] = []
        self.cpuid: list[CpuidRecord] = []
        self.xgetbv: list[XgetbvRecord] = []
        self.values: list[ValueRecord] = []
        self.stop = NativeStop("max_steps", -1, "")
        self.kinds: dict[int, int] = {}
        self.code: dict[int, bytes] = {}
        #: Every instruction the run met, decoded once (with capstone's detail).
        self.instructions = InstructionTable(self.code)
        #: rip -> how to find the memory the instruction there may write:
        #: (register index or -1, index register or -1, scale, displacement
        #: (rip-relative: from the next instruction), segment base or -1, size, mask).
        self.write_plans: dict[int, tuple[tuple[int, int, int, int, int, int, int], ...]] = {}
        #: rip -> the stores its instruction always makes (store_plans, _certain_stores),
        #: and row -> where they went: what the emulator must have written too.
        self.store_plans: dict[int, tuple[tuple[int, ...], bool]] = {}
        self.stored: dict[int, list[tuple[int, int]]] = {}
        #: Read the bytes each row wrote after it (NativeRun.memory) in the one
        #: pass; off in a second pass, which reads what it is told (read_after).
        self.capture_writes = True
        self.initial_registers: dict[str, int] = {}
        self.initial_stack = b""
        self.load_bias = 0
        #: The program's entry and its interpreter's base, as the kernel's auxv says.
        self.at_entry = -1
        self.interp_base = 0
        self.disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self.disassembler.detail = False
        #: For the operand of rdrand/rdseed (rare: decoded with detail only there).
        self.detailed = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self.detailed.detail = True
        #: The CPU model's time-stamp counter (record/machine/cpu.py), as the recorder counts it.
        self.tsc = TSC_START
        #: What the program wrote to fd 1 and 2 (captured, never written: sandbox.py).
        self.stdout = bytearray()
        self.stderr = bytearray()
        #: A second pass: the first pass's answers, and what memory to read after which row.
        self.replayed_syscalls: deque[SyscallRecord] | None = None
        self.replayed_values: deque[ValueRecord] = deque()
        self.read_after: dict[int, list[tuple[int, int]]] = {}
        self.memory: dict[int, list[tuple[int, bytes]]] = {}
        #: A trace's run: its system calls by row, and the first that differs.
        self.recorded_syscalls: dict[int, SyscallRecord] | None = None
        self.syscall_difference: tuple[int, str] | None = None
        #: Registers to put back once the call being stepped returned (an mmap moved
        #: or made anonymous), and the file bytes to copy into what it mapped.
        self.restore_after_call: dict[int, int] = {}
        self.fill_after_call = b""
        #: The recorder's file view (an ELF's run), answering file system calls.
        self.files: NativeFiles | None = None
        #: Every mmap placed where the recorder's kernel places it (an ELF's run).
        self.place_as_recorded = False
        #: A trace's run: the calls before its first row answered by the recorder's kernel.
        self.answer_start_up_as_recorder = False
        #: brk answered by the tracer from the recorder's kernel (a moved static-pie),
        #: and the recorder's break before the call being answered.
        self.brk_by_tracer = False
        self.brk_before = 0

    def replay_from(self, first: NativeRun, read_after: dict[int, list[tuple[int, int]]]) -> None:
        self.replayed_syscalls = deque(first.syscalls)
        self.replayed_values = deque(first.values)
        self.read_after = read_after

    def read(self, addr: int, size: int) -> bytes:
        try:
            return os.pread(self.mem, size, addr)
        except OSError:
            return b""

    def fix_auxv(self) -> None:
        """At the exec stop: fixed AT_RANDOM bytes, and no vDSO (AT_SYSINFO_EHDR hidden).

        With the vDSO's address hidden, glibc makes real system calls for
        clock_gettime and friends, which the log sees and the emulation replays.
        """
        regs = UserRegs()
        ptrace(PTRACE_GETREGS, self.pid, None, ctypes.byref(regs))
        sp = int(regs[USER_REGS.index("rsp")])
        self.patch_auxv(sp)
        self.initial_registers = {
            name: int(regs[USER_REGS.index("eflags" if name == "rflags" else name)])
            for name in (*REGISTERS, "fs_base")
        }
        self.initial_stack = self.read(sp, self.stack_end(sp) - sp)

    def start_as_recorded(self, start: RecordedStart) -> None:
        """The recorder's initial stack and registers instead of the kernel's."""
        if self.stack_end(start.rsp) != self.stack_end(int(self.initial_registers["rsp"])):
            raise NativeError(f"the recorded stack at {start.rsp:#x} is not in the native stack")
        os.pwrite(self.mem, start.stack, start.rsp)
        regs = UserRegs()
        ptrace(PTRACE_GETREGS, self.pid, None, ctypes.byref(regs))
        for name, value in start.registers.items():
            if name != "rip":
                regs[USER_REGS.index("eflags" if name == "rflags" else name)] = value
        regs[USER_REGS.index("rsp")] = start.rsp
        ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(regs))
        self.initial_registers = {
            name: int(regs[USER_REGS.index("eflags" if name == "rflags" else name)])
            for name in (*REGISTERS, "fs_base")
        }
        self.initial_stack = start.stack

    def relocate(self, bias: int) -> None:
        self.load_bias = bias
        self.start = None if self.start is None else self.start + bias
        self.end = None if self.end is None else self.end + bias

    def stack_end(self, sp: int) -> int:
        """The end of the mapping that holds `sp` (the kernel's [stack])."""
        for line in Path(f"/proc/{self.pid}/maps").read_text().splitlines():
            begin, end = (int(x, 16) for x in line.split()[0].split("-"))
            if begin <= sp < end:
                return end
        return sp

    def patch_auxv(self, sp: int) -> None:
        argc = int.from_bytes(self.read(sp, 8), "little")
        cursor = sp + 8 * (argc + 2)  # past argc, argv[], NULL
        while int.from_bytes(self.read(cursor, 8), "little"):
            cursor += 8  # envp[]
        cursor += 8
        while True:
            entry = self.read(cursor, 16)
            if len(entry) < 16:
                return
            key = int.from_bytes(entry[:8], "little")
            value = int.from_bytes(entry[8:], "little")
            if key == AT_NULL:
                return
            if key == AT_ENTRY:
                self.at_entry = value
            elif key == AT_BASE:
                self.interp_base = value
            if key == AT_RANDOM:
                os.pwrite(self.mem, FIXED_AT_RANDOM, value)
            elif key == AT_SYSINFO_EHDR:
                os.pwrite(self.mem, AT_IGNORE.to_bytes(8, "little"), cursor)
            cursor += 16

    def kind(self, rip: int) -> int:
        kind = self.kinds.get(rip)
        if kind is None:
            code = self.read(rip, 16) or self.read(rip, 1)
            self.code[rip] = code
            self.instructions.forget(rip)
            insn = self.instructions.at(rip)
            kind = _KINDS.get(insn.id, _KIND_OTHER)
            self.kinds[rip] = kind
            self.write_plans[rip] = _write_plan(insn, rip)
            self.store_plans.pop(rip, None)  # the code there was rewritten since
            certain = _certain_stores(insn, self.write_plans[rip])
            if certain is not None:
                self.store_plans[rip] = certain
        return kind

    def run(self) -> None:
        # The per-step path: two ptrace calls, one wait, one row copy. libc's
        # ptrace without prototypes, given prepared ctypes arguments: the
        # argument conversion would cost about a tenth of the step.
        raw_ptrace = _raw_ptrace()
        getregs = ctypes.c_long(PTRACE_GETREGS)
        # Every step stops at a system call's entry without running it: one the
        # decoder did not see coming (int 0x80, rewritten code) cannot run either.
        sysemu_step = ctypes.c_long(PTRACE_SYSEMU_SINGLESTEP)
        real_step = ctypes.c_long(PTRACE_SINGLESTEP)
        pid = ctypes.c_int(self.pid)
        waitpid = os.waitpid
        regs = UserRegs()
        regs_ref = ctypes.byref(regs)
        rows = self.rows
        kinds = self.kinds
        recording = self.start is None
        if not recording and self.fast_forward:
            reached = self.run_to_start()
            if reached is None:  # the program ended, or stopped, before --from
                return
            if reached:
                self.skipped = -1  # at full speed: not counted
                recording = True
        steps = 0  # rows recorded
        skipped = 0
        previous = b""
        previous_rip = -1
        capture = self.capture_writes
        plans = self.write_plans
        memory = self.memory
        read = self.read
        #: The row just stepped: the ranges its memory operands name, and rsp before it.
        written_step = -1
        written_ranges: list[tuple[int, int]] = []
        rsp_before = 0
        store_plans = self.store_plans
        stored = self.stored
        #: The stepped row's certain stores: (its operands' indexes, whether it pushes).
        certain: tuple[tuple[int, ...], bool] | None = None
        while True:
            raw_ptrace(getregs, pid, None, regs_ref)
            rip = regs[_RIP]
            if written_step >= 0:
                # What the row just stepped wrote: its memory operands, and what
                # a push, call or pushf put under rsp (the comparison of memory
                # writes reads these instead of running the program again).
                pushed = rsp_before - regs[_RSP]
                if certain is not None:
                    indexes, pushes = certain
                    stored[written_step] = [written_ranges[i] for i in indexes] + (
                        [(regs[_RSP], pushed)] if pushes and 0 < pushed <= _MAX_PUSHED else []
                    )
                if 0 < pushed <= _MAX_PUSHED:
                    written_ranges.append((regs[_RSP], pushed))
                if written_ranges:
                    memory[written_step] = [(a, read(a, n)) for a, n in written_ranges]
                written_step = -1
            if not recording and rip == self.start:
                recording = True
                self.skipped = skipped
            row = bytes(regs)
            # A jump to itself: the same registers again. orig_rax is the
            # kernel's, not the CPU's: it still holds the last system call's
            # number in the stop right after it.
            spins = (
                rip == previous_rip
                and row[:_ORIG_RAX_AT] == previous[:_ORIG_RAX_AT]
                and row[_ORIG_RAX_AT + 8 :] == previous[_ORIG_RAX_AT + 8 :]
            )
            previous, previous_rip = row, rip
            if recording:
                if rip == self.sentinel:
                    self.stop = NativeStop("returned", steps - 1, "the entry function returned")
                    return
                if rip == self.end and steps:
                    self.stop = NativeStop("to", steps - 1, f"reached {rip:#x}")
                    return
                if spins:
                    self.stop = NativeStop(
                        "spin", steps - 1, f"the instruction at {rip:#x} jumps to itself"
                    )
                    return
                if steps >= self.max_steps:
                    self.stop = NativeStop(
                        "max_steps", steps - 1, f"stopped after {self.max_steps} steps"
                    )
                    return
                rows += row
                step = steps
                steps += 1
            else:
                # Before the window (--from): the same limits, so a program that
                # never gets there ends too; no rows, so the check can say so.
                if spins or skipped >= self.max_steps:
                    why = "spins" if spins else f"ran {skipped} instructions"
                    self.stop = NativeStop("not_started", -1, f"{why} at {rip:#x}")
                    return
                step = skipped - 1_000_000_000_000  # before the window: negative
                skipped += 1
            kind = kinds.get(rip)
            if kind is None:
                kind = self.kind(rip)
            before = bytes(regs) if kind != _KIND_OTHER else b""
            singlestep = sysemu_step
            if kind in (_KIND_CPUID, _KIND_XGETBV) and self.answer_from_model(kind, regs, step):
                continue  # answered without running it: the registers are set
            if kind == _KIND_VALUE and self.replayed_values and self.replay_value(regs, step):
                continue
            if (
                kind == _KIND_VALUE
                and (not recording or self.recorded_syscalls is not None)
                and self.answer_value_from_model(regs, step)
            ):
                # Before --from, and in a trace's run: the CPU model's value, as
                # the emulation's start-up and the recording got.
                continue
            if kind == _KIND_SYSCALL:
                verdict = self.system_call(regs, step)
                if verdict == sandbox.STOP:
                    return
                if verdict == sandbox.ANSWER:
                    continue  # answered without running it: the registers are set
                singlestep = real_step  # it acts on the process only: the kernel runs it
            if capture and recording:
                written_step, rsp_before = step, regs[_RSP]
                certain = store_plans.get(rip)
                written_ranges = [
                    (
                        (
                            (disp + (regs[base] if base >= 0 else 0)
                             + (regs[index] * scale if index >= 0 else 0)) & mask
                        )
                        + (regs[segment] if segment >= 0 else 0) & _MASK64,
                        size,
                    )
                    for base, index, scale, disp, segment, size, mask in plans[rip]
                ]  # fmt: skip
            if raw_ptrace(singlestep, pid, None, None) == -1:
                raise PtraceError(ctypes.get_errno(), "ptrace(PTRACE_SINGLESTEP) failed")
            _, status = waitpid(self.pid, 0)
            if status == _STOPPED_AT_SYSCALL:
                # Not run (SYSEMU). Not decoded as a `syscall` before the step.
                self.stop = NativeStop(
                    "fault",
                    steps - 1,
                    f"a system call at {rip:#x} the check did not decode (int 0x80, sysenter "
                    "or rewritten code): not run",
                )
                return
            if kind != _KIND_OTHER and (os.WIFSTOPPED(status) or kind == _KIND_SYSCALL):
                self.log_outside_world(kind, step, before, status)
            if status == _STOPPED_BY_SIGTRAP:
                if recording and step in self.read_after:
                    self.memory[step] = [
                        (addr, self.read(addr, size)) for addr, size in self.read_after[step]
                    ]
                continue
            self.finish(status, steps, rip, kind, recording)
            return

    def run_to_start(self) -> bool | None:
        """To `start` at full speed: a breakpoint there, PTRACE_SYSEMU (every system
        call still stops at its entry, unrun, for the sandbox) and CPUID faulting
        (cpuid raises SIGSEGV and is answered from the CPU model). True: at
        `start`; False: CPUID faulting unavailable, nothing ran (single-step
        instead); None: the run ended before `start` (`self.stop` says how)."""
        if not self.cpuid_faults():
            return False
        start = int(self.start or 0)
        saved = self.read(start, 1)
        if not saved:
            return False
        os.pwrite(self.mem, b"\xcc", start)
        regs = UserRegs()
        reg = USER_REGS.index
        try:
            while True:
                ptrace(PTRACE_SYSEMU, self.pid, None, None)
                _, status = os.waitpid(self.pid, 0)
                if not os.WIFSTOPPED(status):
                    self.finish(status, 0, 0, _KIND_OTHER, False)
                    self.stop = NativeStop("not_started", -1, self.stop.detail)
                    return None
                ptrace(PTRACE_GETREGS, self.pid, None, ctypes.byref(regs))
                rip = int(regs[_RIP])
                if status == _STOPPED_AT_SYSCALL:
                    at = rip - 2
                    if self.read(at, 2) != b"\x0f\x05":  # int 0x80, sysenter: not run
                        self.stop = NativeStop("not_started", -1, f"a system call at {at:#x}")
                        return None
                    regs[_RAX], regs[_RIP] = regs[reg("orig_rax")], at
                    ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(regs))
                    if not self.fast_forward_syscall(regs):
                        return None
                    continue
                signo = os.WSTOPSIG(status)
                if signo == signal.SIGTRAP and rip - 1 == start:
                    regs[_RIP] = start
                    ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(regs))
                    os.pwrite(self.mem, saved, start)
                    # From here on rdtsc is single-stepped on the CPU, its value logged.
                    self.inject_syscall(_PRCTL, _PR_SET_TSC, _PR_TSC_ENABLE)
                    return True
                if signo == signal.SIGSEGV and self.read(rip, 2) == b"\x0f\xa2":
                    self.answer_from_model(_KIND_CPUID, regs, -1)
                    continue
                # rdtsc/rdtscp fault (PR_TSC_SIGSEGV): the CPU model's counter, logged.
                if (
                    signo == signal.SIGSEGV
                    and self.kind(rip) == _KIND_VALUE
                    and self.answer_value_from_model(regs, -1)
                ):
                    continue
                self.finish(status, 0, rip, _KIND_OTHER, False)
                self.stop = NativeStop("not_started", -1, self.stop.detail)
                return None
        finally:
            with contextlib.suppress(OSError):
                os.pwrite(self.mem, saved, start)

    def fast_forward_syscall(self, regs: Any) -> bool:
        """A system call during the fast-forward: as when single-stepping. False: the run ended."""
        before = bytes(regs)
        verdict = self.system_call(regs, -1)
        if verdict == sandbox.STOP:
            self.stop = NativeStop("not_started", -1, self.stop.detail)
            return False
        if verdict == sandbox.RUN:
            # Resumed from the entry stop with rip back at the `syscall`: the
            # first single-step trap may come before it runs (the kernel reports
            # the step on its way out of the skipped call); step until it ran.
            at = int(regs[_RIP])
            after = UserRegs()
            for _ in range(3):
                ptrace(PTRACE_SINGLESTEP, self.pid, None, None)
                _, status = os.waitpid(self.pid, 0)
                if not os.WIFSTOPPED(status):
                    break
                ptrace(PTRACE_GETREGS, self.pid, None, ctypes.byref(after))
                if int(after[_RIP]) != at:
                    break
            self.log_outside_world(_KIND_SYSCALL, -1, before, status)
            if not os.WIFSTOPPED(status):
                self.finish(status, 0, 0, _KIND_SYSCALL, False)
                self.stop = NativeStop("not_started", -1, self.stop.detail)
                return False
        return True

    def cpuid_faults(self) -> bool:
        """arch_prctl(ARCH_SET_CPUID, 0) in the program, injected at its first
        instruction: whether the kernel and CPU support CPUID faulting. Then
        prctl(PR_SET_TSC, PR_TSC_SIGSEGV): rdtsc and rdtscp fault too, and are
        answered from the CPU model during the fast-forward (run_to_start)."""
        if self.inject_syscall(158, _ARCH_SET_CPUID, 0) != 0:
            return False
        if self.inject_syscall(_PRCTL, _PR_SET_TSC, _PR_TSC_SIGSEGV) != 0:
            raise NativeError("prctl(PR_SET_TSC, PR_TSC_SIGSEGV) refused, CPUID faulting works")
        return True

    def inject_syscall(self, nr: int, *args: int, code_moves_by: int = 0) -> int:
        """System call `nr`(*args) in the program, at its current instruction
        (a `syscall` written over it, then put back, registers restored): its
        result. `code_moves_by`: the call moves the code it runs from that far
        down (an mremap of the program), where its bytes are put back."""
        regs, saved = UserRegs(), UserRegs()
        ptrace(PTRACE_GETREGS, self.pid, None, ctypes.byref(saved))
        ctypes.memmove(regs, saved, ctypes.sizeof(regs))
        rip = int(saved[_RIP])
        code = self.read(rip, 2)
        try:
            os.pwrite(self.mem, b"\x0f\x05", rip)
            regs[_RAX] = nr
            for index, value in zip(_ARG_REGS, args, strict=False):
                regs[index] = value
            ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(regs))
            # From a system call's entry stop (the fast-forward's), the first
            # single-step trap can come before the `syscall` ran: step until it did.
            for _ in range(3):
                ptrace(PTRACE_SINGLESTEP, self.pid, None, None)
                _, status = os.waitpid(self.pid, 0)
                if not os.WIFSTOPPED(status):
                    raise NativeError(f"the program died in an injected system call ({nr})")
                ptrace(PTRACE_GETREGS, self.pid, None, ctypes.byref(regs))
                if int(regs[_RIP]) != rip:
                    break
            result = int(regs[_RAX])
            return result - (1 << 64) if result >> 63 else result
        finally:
            os.pwrite(self.mem, code, rip - code_moves_by)
            ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(saved))

    def move_program(self, image: ElfImage, bias: int) -> None:
        """At the exec stop, a static-pie the kernel loaded `bias` above where the
        recorder loads it (Linux with ASLR off puts it under the vDSO, the
        recorder at PIE_BASE): every mapping of it moved down by `bias`
        (mremap, nothing has run yet: a static-pie relocates itself from where
        it finds itself), rip with it, so that it runs at the recording's
        addresses. The kernel's own break stays where it put it, under the
        program's new place: brk is answered by the tracer from then on, as
        the recorder's kernel answers it (`brk_by_tracer`)."""
        first = min(s.vaddr for s in image.segments) // PAGE * PAGE + bias
        last = image.end + bias
        maps = []
        for line in Path(f"/proc/{self.pid}/maps").read_text().splitlines():
            begin, end = (int(x, 16) for x in line.split()[0].split("-"))
            if first <= begin and end <= page_ceil(last):
                maps.append((begin, end))
        regs = UserRegs()
        ptrace(PTRACE_GETREGS, self.pid, None, ctypes.byref(regs))
        rip = int(regs[_RIP])
        # The mapping that holds rip last: the injected `syscall` runs from it.
        maps.sort(key=lambda m: m[0] <= rip < m[1])
        for begin, end in maps:
            runs_here = begin <= rip < end
            moved = self.inject_syscall(
                _SYS_MREMAP,
                begin,
                end - begin,
                end - begin,
                _MREMAP_MAYMOVE | _MREMAP_FIXED,
                begin - bias,
                code_moves_by=bias if runs_here else 0,
            )
            if moved != begin - bias:
                raise NativeError(
                    f"could not move the program from {begin:#x} to {begin - bias:#x} "
                    f"(mremap: {moved})"
                )
        ptrace(PTRACE_GETREGS, self.pid, None, ctypes.byref(regs))
        regs[_RIP] = rip - bias
        ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(regs))
        self.start = None if self.start is None else self.start - bias
        self.end = None if self.end is None else self.end - bias
        self.load_bias = 0
        self.brk_by_tracer = True

    def answer_brk(self, regs: Any, step: int, nr: int, args: tuple[int, ...], new: int) -> str:
        """brk when the tracer keeps the break (a moved static-pie): `new` is the
        recorder's kernel's answer; the pages it grew into are mapped natively."""
        assert self.files is not None
        mapped_end = page_ceil(self.brk_before)
        if page_ceil(new) > mapped_end:
            at = self.inject_syscall(
                _SYS_MMAP,
                mapped_end,
                page_ceil(new) - mapped_end,
                _PROT_READ_WRITE,
                _MAP_PRIVATE_ANONYMOUS | _MAP_FIXED,
                _MASK64,
                0,
            )
            if at != mapped_end:  # the native map has no room where the recorder's has
                new = self.brk_before
        self.set_result(regs, int(regs[_RIP]), new)
        self.syscalls.append(SyscallRecord(step, nr, args, new & _MASK64, (), int(regs[_R11])))
        return sandbox.ANSWER

    def replay_value(self, regs: Any, step: int) -> bool:
        """A second pass at rdtsc/rdrand/...: the first pass's registers after it."""
        value = self.replayed_values.popleft()
        if value.step != step:
            return False
        flags = int(regs[_EFLAGS])
        for name, after in value.after.items():
            regs[USER_REGS.index("eflags" if name == "rflags" else name)] = after
        regs[_EFLAGS] = (int(regs[_EFLAGS]) & ~_TF) | (flags & _TF)
        ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(regs))
        self.values.append(value)
        return True

    def answer_value_from_model(self, regs: Any, step: int) -> bool:
        """rdtsc, rdtscp, rdrand or rdseed about to run: the recorder's CPU model's
        value instead (its counter from TSC_START; RANDOM_VALUE with CF = 1),
        rip past it, logged (True); False: not what was decoded there, run it."""
        rip = int(regs[_RIP])
        code = self.read(rip, 16)
        insn = next(self.detailed.disasm(code, rip, 1), None)
        mnemonic = _VALUE_INSTRUCTIONS.get(insn.id) if insn is not None else None
        if insn is None or mnemonic is None:
            return False
        reg = USER_REGS.index
        if mnemonic in ("rdtsc", "rdtscp"):
            value, self.tsc = self.tsc, self.tsc + TSC_STEP
            regs[_RAX], regs[reg("rdx")] = value & 0xFFFFFFFF, value >> 32
            if mnemonic == "rdtscp":
                regs[_RCX] = 0
        else:
            operand = insn.operands[0]
            name = full_register(insn.reg_name(operand.reg))
            if name not in USER_REGS:
                return False
            value = RANDOM_VALUE & ((1 << (8 * operand.size)) - 1)
            if operand.size == 2:  # a 16-bit write keeps the upper bytes
                value |= int(regs[reg(name)]) & ~0xFFFF & _MASK64
            regs[reg(name)] = value
            regs[_EFLAGS] = (int(regs[_EFLAGS]) & ~_ARITH_FLAGS) | _CF
        regs[_RIP] = rip + insn.size
        ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(regs))
        row = np.frombuffer(bytes(regs), dtype=np.uint64)[_ROW_INDEX]
        after = {name: int(value) for name, value in zip(REGISTERS, row, strict=True)}
        self.values.append(ValueRecord(step, mnemonic, after))
        return True

    def answer_from_model(self, kind: int, regs: Any, step: int) -> bool:
        """cpuid or xgetbv about to run: the recorder's CPU model's answer instead,
        and rip past it (True), as if the CPU were that model."""
        rip = int(regs[_RIP])
        code = self.read(rip, 3)
        reg = USER_REGS.index
        if kind == _KIND_CPUID and code[:2] == b"\x0f\xa2":
            leaf, subleaf = int(regs[_RAX]) & 0xFFFFFFFF, int(regs[reg("rcx")]) & 0xFFFFFFFF
            values = CpuModel.cpuid(leaf, subleaf)
            for name, value in zip(("rax", "rbx", "rcx", "rdx"), values, strict=True):
                regs[reg(name)] = value  # a 32-bit write: the upper half is zeroed
            regs[_RIP] = rip + 2
            self.cpuid.append(CpuidRecord(step, leaf, subleaf, *values))
        elif kind == _KIND_XGETBV and code == b"\x0f\x01\xd0":
            if int(regs[reg("rcx")]) & 0xFFFFFFFF != 0:
                return False  # XCR index other than 0: let the CPU raise its #GP
            regs[_RAX], regs[reg("rdx")] = XCR0, 0
            regs[_RIP] = rip + 3
            self.xgetbv.append(XgetbvRecord(step, 0, XCR0, 0))
        else:
            return False  # not what was decoded there (rewritten): run it
        ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(regs))
        return True

    def system_call(self, regs: Any, step: int) -> str:
        """At a `syscall` about to run: what the sandbox lets it do (sandbox.py).
        ANSWER: the call is done here, registers set as after it; RUN: step it."""
        rip = int(regs[_RIP])
        if self.read(rip, 2) != b"\x0f\x05":  # rewritten since decoded: SYSEMU catches it
            self.kinds.pop(rip, None)
            self.instructions.forget(rip)
            return sandbox.RUN
        nr = int(regs[_RAX])
        args = tuple(int(regs[i]) for i in _ARG_REGS)
        verdict = sandbox.policy(nr, args, self.pid, self.linux)
        # A second pass: the first pass's call at this point, taken whatever
        # answers this one, so that the two stay in step.
        first = None
        if self.replayed_syscalls:
            first = self.replayed_syscalls.popleft()
        file_data = None
        if self.files is not None:
            if self.files.answers(nr, args):
                verdict = sandbox.ANSWER  # the recorder's file view answers it
            elif nr == _SYS_MMAP:
                file_data = self.files.mapped_file(args)
                if file_data is not None:
                    verdict = sandbox.RUN  # an anonymous mapping, filled from the view
        placed_at = None
        if self.files is not None and self.place_as_recorded and nr in _PLACING:
            # The process's map as the recorder's kernel makes it (the
            # kernel's own would put the loader's mappings under the vDSO).
            self.brk_before = self.files.kernel.process.brk
            placed = self.files.place(nr, args)
            if nr == _SYS_BRK and self.brk_by_tracer and verdict != sandbox.STOP:
                if self.recorded_syscalls is not None and step >= 0:
                    self.as_recorded(regs, step, nr, args, verdict)  # notes a different call
                return self.answer_brk(regs, step, nr, args, placed)
            if nr == _SYS_MMAP and placed < 0 and verdict != sandbox.STOP:
                self.set_result(regs, int(regs[_RIP]), placed)
                self.syscalls.append(
                    SyscallRecord(step, nr, args, placed & _MASK64, (), int(regs[_R11]))
                )
                return sandbox.ANSWER
            if nr == _SYS_MMAP:
                placed_at = placed
        if (
            self.files is not None
            and self.answer_start_up_as_recorder
            and step < 0
            and verdict != sandbox.STOP
            and nr not in sandbox.SHAPES_THE_PROCESS
            and nr not in (sandbox.READ, sandbox.WRITE, sandbox.WRITEV)
        ):
            # Before the first row (--from), starting as the recorder's process:
            # what the recorder's kernel answers there (its tid, its clock, its
            # random bytes ...), which a trace does not log.
            result = self.files.answer(nr, args)
            self.set_result(regs, int(regs[_RIP]), result)
            self.syscalls.append(
                SyscallRecord(step, nr, args, result & _MASK64, (), int(regs[_R11]))
            )
            return sandbox.ANSWER
        if self.recorded_syscalls is not None and step >= 0:
            answered = self.as_recorded(regs, step, nr, args, verdict, file_data)
            if answered is not None:
                return answered
        if verdict == sandbox.RUN and (file_data is not None or placed_at is not None):
            self.map_file(regs, args, file_data, placed_at)
        if self.replayed_syscalls is not None:
            replayable = verdict == sandbox.RUN and nr not in sandbox.SHAPES_THE_PROCESS
            if replayable and first is not None and first.nr == nr:
                # The first pass's answer again (getrandom, clock_gettime ...).
                for addr, data in first.buffers:
                    os.pwrite(self.mem, data, addr)
                self.set_result(regs, rip, first.result)
                self.syscalls.append(first)
                return sandbox.ANSWER
        if verdict == sandbox.STOP:
            thread = ""
            if nr == sandbox.CLONE:
                flags = args[0]
            elif nr == sandbox.CLONE3:  # struct clone_args begins with its flags
                flags = int.from_bytes(self.read(args[0], 8) or bytes(8), "little")
            else:
                flags = 0
            if flags & sandbox.CLONE_THREAD:
                thread = f" ({sandbox.THREAD_DETAIL})"
            self.stop = NativeStop(
                "unsupported",
                step,
                f"{sandbox.stop_name(nr)}: not run natively (sandbox){thread}",
            )
        elif verdict == sandbox.ANSWER:
            result = self.answer(nr, args)
            self.set_result(regs, rip, result)
            self.syscalls.append(
                SyscallRecord(step, nr, args, result & _MASK64, (), int(regs[_R11]))
            )
        return verdict

    def map_file(
        self, regs: Any, args: tuple[int, ...], data: bytes | None, at: int | None
    ) -> None:
        """An mmap about to run: a file mapping of the view becomes an anonymous
        private one the tracer fills with `data` once it returned; `at`: placed
        there (MAP_FIXED). The program's registers are put back after the call."""
        flags = args[3]
        if data is not None and self.files is not None:
            flags = self.files.anonymous_flags(flags)
            regs[_ARG_REGS[4]], regs[_ARG_REGS[5]] = _MASK64, 0  # fd -1, offset 0
            self.fill_after_call = data
        if at is not None:
            regs[_ARG_REGS[0]] = at
            flags |= _MAP_FIXED
        regs[_ARG_REGS[3]] = flags
        self.restore_after_call = {index: args[i] for i, index in enumerate(_ARG_REGS)}
        ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(regs))

    def as_recorded(
        self,
        regs: Any,
        step: int,
        nr: int,
        args: tuple[int, ...],
        verdict: str,
        file_data: bytes | None = None,
    ) -> str | None:
        """A trace's run, at a system call in the window: the trace's answer
        (ANSWER), or the call run natively as the trace says it went (RUN: an
        mmap placed at the recorded address), or None (not the trace's call:
        the difference noted, the sandbox answers)."""
        assert self.recorded_syscalls is not None
        recorded = self.recorded_syscalls.get(step)
        if recorded is None or recorded.nr != nr or recorded.args != args:
            if self.syscall_difference is None:
                name = NAMES.get(nr, f"syscall_{nr}")
                if recorded is None:
                    what = f"the CPU made system call {name}, the trace none at this row"
                elif recorded.nr != nr:
                    what = f"the CPU made system call {name}, the trace {recorded.name}"
                else:
                    at = next(i for i in range(6) if recorded.args[i] != args[i])
                    what = (
                        f"{name}'s argument {at + 1}: CPU {args[at]:#x}, "
                        f"trace {recorded.args[at]:#x}"
                    )
                self.syscall_difference = (step, what)
            return None
        if verdict == sandbox.STOP:
            return None
        rip = int(regs[_RIP])
        if nr in sandbox.SHAPES_THE_PROCESS:
            if nr == _SYS_MMAP and recorded.result < 1 << 63 and verdict == sandbox.RUN:
                # Where the recording's went (the kernel's own choice would be
                # another address: the vDSO sits under the mmap base here).
                self.map_file(regs, args, file_data, recorded.result)
                return sandbox.RUN
            return None  # as the sandbox and the file view say (their own answers)
        if verdict == sandbox.ANSWER:
            self.answer(nr, args)  # output captured, the view's descriptors kept
        for addr, data in recorded.buffers:
            os.pwrite(self.mem, data, addr)
        self.set_result(regs, rip, recorded.result)
        self.syscalls.append(replace(recorded, r11_after=int(regs[_R11])))
        return sandbox.ANSWER

    def set_result(self, regs: Any, rip: int, result: int) -> None:
        """What the CPU and the kernel leave after a `syscall` at `rip`: rax the
        result, rcx the next instruction, r11 rflags as `syscall` saves them on
        an untraced CPU (without the tracer's TF), rip past the 2-byte `syscall`."""
        regs[_RAX] = result & _MASK64
        regs[_RCX] = rip + 2
        regs[_R11] = int(regs[_EFLAGS]) & ~_TF
        regs[_RIP] = rip + 2
        ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(regs))

    def answer(self, nr: int, args: tuple[int, ...]) -> int:
        """A call that is not run: the recorder's machine's answer (record/machine/syscalls.py)."""
        if self.files is not None and self.files.answers(nr, args):
            return self.files.answer(nr, args)
        if nr == sandbox.READ:
            return 0 if args[0] == 0 else -sandbox.EBADF  # stdin is empty
        if nr not in (sandbox.WRITE, sandbox.WRITEV):
            return -sandbox.ENOSYS
        fd = args[0]
        if fd not in (1, 2):
            return -sandbox.EBADF
        pieces = [(args[1], args[2])]
        if nr == sandbox.WRITEV:
            if args[2] > 1024:
                return -22  # EINVAL
            raw = self.read(args[1], 16 * args[2]) if args[2] else b""
            if len(raw) < 16 * args[2]:
                return -14  # EFAULT
            pieces = [
                (
                    int.from_bytes(raw[i : i + 8], "little"),
                    int.from_bytes(raw[i + 8 : i + 16], "little"),
                )
                for i in range(0, len(raw), 16)
            ]
        kept = self.stdout if fd == 1 else self.stderr
        total = 0
        for base, length in pieces:
            room = max(sandbox.MAX_OUTPUT - len(kept), 0)
            data = self.read(base, min(length, room)) if min(length, room) else b""
            if len(data) < min(length, room):
                return -14  # EFAULT
            kept += data
            total += length
        return total

    def log_outside_world(self, kind: int, step: int, before: bytes, status: int) -> None:
        pre = np.frombuffer(before, dtype=np.uint64)
        post = UserRegs()
        exited = not os.WIFSTOPPED(status)
        if not exited:
            ptrace(PTRACE_GETREGS, self.pid, None, ctypes.byref(post))
        if kind == _KIND_SYSCALL:
            nr = int(pre[_RAX])
            args = tuple(int(pre[i]) for i in _ARG_REGS)
            result = int(post[_RAX]) if not exited else 0
            if not exited and self.restore_after_call:
                # An mmap moved or made anonymous: its arguments as the program set them,
                # and a file's bytes copied in.
                for index, value in self.restore_after_call.items():
                    post[index] = value
                self.restore_after_call = {}
                ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(post))
                if self.fill_after_call and result < 1 << 63:
                    os.pwrite(self.mem, self.fill_after_call, result)
                self.fill_after_call = b""
            if not exited and post[_R11] & _TF:
                # `syscall` saved rflags into r11 with the tracer's TF: what an
                # untraced CPU saves has TF clear (no normalisation needed after).
                post[_R11] &= ~_TF
                ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(post))
            self.syscalls.append(
                SyscallRecord(
                    step,
                    nr,
                    args,
                    result,
                    self.filled_buffers(nr, args, result),
                    int(post[USER_REGS.index("r11")]),
                )
            )
        elif exited:
            return
        elif kind == _KIND_PUSHF:
            # pushf pushed the tracer's TF (bit 8, in the second byte): an
            # untraced CPU pushes it clear, and a program may pop it anywhere.
            rsp = int(post[USER_REGS.index("rsp")])
            second = self.read(rsp + 1, 1)
            if second and second[0] & 1:
                os.pwrite(self.mem, bytes([second[0] & ~1]), rsp + 1)
        elif kind == _KIND_CPUID:
            reg = USER_REGS.index
            self.cpuid.append(
                CpuidRecord(
                    step,
                    int(pre[_RAX]) & 0xFFFFFFFF,
                    int(pre[reg("rcx")]) & 0xFFFFFFFF,
                    *(int(post[reg(r)]) & 0xFFFFFFFF for r in ("rax", "rbx", "rcx", "rdx")),
                )
            )
        elif kind == _KIND_VALUE:
            insn = next(self.disassembler.disasm(self.code[int(pre[_RIP])], 0, 1))
            row = np.frombuffer(bytes(post), dtype=np.uint64)[_ROW_INDEX]
            after = {name: int(value) for name, value in zip(REGISTERS, row, strict=True)}
            self.values.append(ValueRecord(step, _VALUE_INSTRUCTIONS[insn.id], after))
        elif kind == _KIND_XGETBV:
            reg = USER_REGS.index
            self.xgetbv.append(
                XgetbvRecord(
                    step,
                    int(pre[reg("rcx")]) & 0xFFFFFFFF,
                    int(post[reg("rax")]) & 0xFFFFFFFF,
                    int(post[reg("rdx")]) & 0xFFFFFFFF,
                )
            )

    def filled_buffers(
        self, nr: int, args: tuple[int, ...], result: int
    ) -> tuple[tuple[int, bytes], ...]:
        where = OUTPUT_BUFFERS.get(nr)
        if where is None or result >= 1 << 63:  # an error (-errno): nothing was filled
            return ()
        arg, size_spec = where
        if size_spec == "result":
            size = result
        elif isinstance(size_spec, tuple):
            size = args[size_spec[1]] * (8 if nr == 7 else 1)
        else:
            size = int(size_spec)
        addr = args[arg]
        if not addr or not 0 < size <= 1 << 20:
            return ()
        data = self.read(addr, size)
        return ((addr, data),) if data else ()

    def finish(self, status: int, steps: int, rip: int, kind: int, recording: bool) -> None:
        last = steps - 1
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            code = os.waitstatus_to_exitcode(status)
            exit_call = self.syscalls[-1].name if self.syscalls else "exit"
            self.stop = NativeStop("exit", last, f"{exit_call}({code & 0xFF})")
            return
        signo = os.WSTOPSIG(status)
        if kind == _KIND_HLT:  # privileged in user mode: #GP, delivered as SIGSEGV
            self.stop = NativeStop("halted", last, f"hlt at {rip:#x}")
            return
        info = SigInfo()
        ptrace(PTRACE_GETSIGINFO, self.pid, None, ctypes.byref(info))
        name = signal.Signals(signo).name
        if signo in (signal.SIGSEGV, signal.SIGBUS) and info.si_addr == rip and recording:
            # The fetch itself faulted: that instruction never ran, it is no step.
            del self.rows[-8 * len(USER_REGS) :]
            last -= 1
            detail = f"{name}: fetch from {rip:#x}"
        else:
            detail = f"{name} at {rip:#x} (address {info.si_addr:#x})"
        self.stop = NativeStop("fault", last, detail)
