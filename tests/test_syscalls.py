"""The Linux kernel model alone: a few system calls made from hand-written code.

Each call's answer is fixed (docs/machine.md); every call is logged with its
step, number, name, arguments and result.
"""

from __future__ import annotations

from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from stacktrace_lab.layout import Region
from stacktrace_lab.record.machine.machine import Machine, MachineSpec, Mapping
from stacktrace_lab.record.machine.syscalls import (
    CLOCK_START_S,
    EINVAL,
    ENOSYS,
    Area,
    LinuxKernel,
    ProcessState,
    fixed_random,
)

CODE = 0x400000
DATA = 0x600000
STACK_TOP = 0x800000
BRK = 0x700000


def run(source: str) -> tuple[Machine, LinuxKernel]:
    code, _ = Ks(KS_ARCH_X86, KS_MODE_64).asm(source, CODE)
    code_bytes = bytes(code or [])
    state = ProcessState(
        path="/stacktrace-lab/test",
        areas=[Area(STACK_TOP - 0x10000, STACK_TOP, "rw-p", "[stack]", "stack")],
        brk_start=BRK,
        mmap_top=0x7FF000000000,
    )
    spec = MachineSpec(
        mappings=[
            Mapping(CODE, 0x1000, "r-x", code_bytes, CODE),
            Mapping(DATA, 0x1000, "rw-"),
            Mapping(STACK_TOP - 0x10000, 0x10000, "rw-"),
        ],
        regions=[
            Region("code", "code", CODE, len(code_bytes), "r-x"),
            Region("data", "data", DATA, 0x1000, "rw-"),
            Region("main", "stack", STACK_TOP - 0x10000, 0x10000, "rw-"),
        ],
        entry=CODE,
        registers={"rsp": STACK_TOP - 8},
        kernel=lambda: LinuxKernel(state),
    )
    machine = Machine(spec)
    machine.run(1000, 1000, lambda chunk: None)
    kernel = machine.kernel
    assert isinstance(kernel, LinuxKernel)
    return machine, kernel


def test_memory_calls_follow_the_layout() -> None:
    machine, kernel = run(
        f"""
        mov eax, 12; xor edi, edi; syscall            # brk(0): where the heap starts
        mov edi, {BRK + 0x2000}; mov eax, 12; syscall # grow it by two pages
        mov dword ptr [{BRK + 0x1FF0}], 7             # the new pages are there
        mov eax, 9; xor edi, edi; mov esi, 0x3000; mov edx, 3; mov r10d, 0x22
        mov r8, -1; xor r9d, r9d; syscall             # an anonymous mmap
        mov eax, 318; mov edi, {DATA}; mov esi, 16; xor edx, edx; syscall
        mov eax, 228; xor edi, edi; mov esi, {DATA + 64}; syscall
        mov eax, 334; syscall                         # rseq: not here
        hlt
        """
    )
    calls = [(c.name, c.result) for c in kernel.log]
    assert calls == [
        ("brk", BRK),
        ("brk", BRK + 0x2000),
        ("mmap", 0x7FF000000000 - 0x3000),
        ("getrandom", 16),
        ("clock_gettime", 0),
        ("rseq", -ENOSYS),
    ]
    assert machine.read(DATA, 16) == fixed_random(16)
    assert int.from_bytes(machine.read(DATA + 64, 8), "little") == CLOCK_START_S
    assert [a.kind for a in kernel.process.space] == ["heap", "stack", "mapped"]
    # Every call is logged at the step of its `syscall` instruction.
    assert [c.step for c in kernel.log] == [2, 5, 14, 19, 23, 25]


def _read_u64(machine: Machine, addr: int) -> int:
    return int.from_bytes(machine.read(addr, 8), "little")


def test_the_clock_moves_a_microsecond_a_read_and_jumps_over_a_sleep() -> None:
    """The machine's clock (threads.Clock), never the host's: each read moves it
    1 us; a sleep moves it to the sleep's end; gettimeofday and time read it too."""
    request = DATA + 0x200
    machine, kernel = run(
        f"""
        mov eax, 228; xor edi, edi; mov esi, {DATA}; syscall              # t0
        mov eax, 228; mov edi, 1; mov esi, {DATA + 16}; syscall           # t0 + 1 us
        mov qword ptr [{request}], 0; mov qword ptr [{request + 8}], 5000000
        mov eax, 35; mov edi, {request}; xor esi, esi; syscall            # sleep 5 ms
        mov eax, 228; xor edi, edi; mov esi, {DATA + 32}; syscall
        mov eax, 96; mov edi, {DATA + 48}; mov esi, {DATA + 64}; syscall  # gettimeofday
        mov eax, 201; mov edi, {DATA + 80}; syscall                       # time
        mov qword ptr [{request}], {CLOCK_START_S + 3}; mov qword ptr [{request + 8}], 0
        mov eax, 230; xor edi, edi; mov esi, 1; mov edx, {request}; xor r10d, r10d
        syscall                                                           # until t0 + 3 s
        mov eax, 228; xor edi, edi; mov esi, {DATA + 96}; syscall
        mov qword ptr [{request + 8}], -1
        mov eax, 35; mov edi, {request}; xor esi, esi; syscall            # bad nanoseconds
        hlt
        """
    )
    times = [
        (_read_u64(machine, DATA + at), _read_u64(machine, DATA + at + 8)) for at in (0, 16, 32, 96)
    ]
    assert times == [
        (CLOCK_START_S, 0),
        (CLOCK_START_S, 1_000),
        (CLOCK_START_S, 5_002_000),  # the sleep began at 2 us
        (CLOCK_START_S + 3, 0),
    ]
    assert (_read_u64(machine, DATA + 48), _read_u64(machine, DATA + 56)) == (CLOCK_START_S, 5_003)
    assert machine.read(DATA + 64, 8) == bytes(8)  # the timezone: UTC
    assert _read_u64(machine, DATA + 80) == CLOCK_START_S
    calls = [(c.name, c.result) for c in kernel.log]
    assert calls == [
        ("clock_gettime", 0),
        ("clock_gettime", 0),
        ("nanosleep", None),  # it blocked: 0 is the answer when it runs again
        ("clock_gettime", 0),
        ("gettimeofday", 0),
        ("time", CLOCK_START_S),
        ("clock_nanosleep", None),
        ("clock_gettime", 0),
        ("nanosleep", -EINVAL),
    ]


def test_a_loop_that_polls_the_clock_until_a_deadline_ends() -> None:
    """On a clock that stood still this loop ran until --max-steps."""
    _machine, kernel = run(
        f"""
        again: mov eax, 228; xor edi, edi; mov esi, {DATA}; syscall
        cmp qword ptr [{DATA + 8}], 100000; jb again                    # 100 us
        hlt
        """
    )
    assert [c.name for c in kernel.log] == ["clock_gettime"] * 101


def test_proc_self_maps_lists_the_mappings() -> None:
    path = DATA + 0x100
    machine, kernel = run(
        f"""
        mov rax, 0x70616d2f666c6573; mov qword ptr [{path + 6}], rax   # "self/map"
        mov rax, 0x65732f636f72702f; mov qword ptr [{path}], rax       # "/proc/se"
        mov word ptr [{path + 14}], 0x73                               # "s\\0"
        mov eax, 257; mov edi, -100; mov esi, {path}; xor edx, edx; syscall
        mov edi, eax; mov eax, 0; mov esi, {DATA + 0x200}; mov edx, 0x100; syscall
        hlt
        """
    )
    opened, read = kernel.log
    assert (opened.name, opened.result) == ("openat", 3)
    text = machine.read(DATA + 0x200, read.result).decode()
    assert text == f"{STACK_TOP - 0x10000:08x}-{STACK_TOP:08x} rw-p 00000000 00:00 0 [stack]\n"
