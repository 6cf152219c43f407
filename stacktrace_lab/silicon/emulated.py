"""The emulated side: the recorder's machine, given the native run's outside world.

The machine is built from parts (record/machine/machine.py): a kernel for system
calls and a CPU model for cpuid, xgetbv and friends. For the comparison
both are wrapped so that they answer what the native run was answered, in
the order it asked:

- `SyscallReplay`: runs the recorder's own kernel (so memory gets mapped,
  output captured, exit stops the run), then gives the program the native
  result and the bytes the native kernel wrote. An mmap goes where the native
  one went (MAP_FIXED).
- `ReplayingCpu`: cpuid, xgetbv, rdtsc, rdtscp, rdrand and rdseed give the
  native values (in the order the native run met them); the rest is the
  recorder's fixed CPU model.

So the comparison tests the CPU model, not the machine it ran on. Without a
native log (`replay=False`) the machine is exactly the recorder's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import unicorn.x86_const as x86
from unicorn.unicorn_py3.unicorn import Uc

from ..arch import REGISTERS
from ..errors import BadInput
from ..record.core.hooks import events_array
from ..record.linux.elf import ElfImage
from ..record.machine.cpu import CpuModel
from ..record.machine.machine import MEM_WRITE, UC_IDS, Chunk, Machine, MachineSpec
from ..record.machine.syscalls import BareKernel
from .native import CpuidRecord, NativeRun, ValueRecord, XgetbvRecord
from .native import SyscallRecord as NativeSyscall

_MASK64 = (1 << 64) - 1
#: (symbols, address -> "file:line" or None) of the libraries a run loaded.
LibraryNames = tuple[dict[str, int], Callable[[int], str | None]]
_SYS_MMAP, _MAP_FIXED = 9, 0x10


@dataclass
class EmulatedRun:
    registers: np.ndarray  # (steps, len(REGISTERS)) uint64
    stop_reason: str
    stop_step: int
    stop_detail: str
    stdout: bytes
    stderr: bytes
    #: Where the emulation asked the outside world something the native run did not.
    replay_mismatches: list[str] = field(default_factory=list)
    #: rdrand/rdseed/rdtsc the emulation met before --from that the native run did
    #: not log (run at full speed, they cannot be trapped natively).
    unreplayed_before_start: list[str] = field(default_factory=list)
    #: Every memory write, in order: (step, address, size, value) int64 rows
    #: (program and kernel alike; the kernel's are at its `syscall` row).
    writes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    #: The names of the code the run's libraries hold, when asked: (symbols at their
    #: load addresses, address -> "file:line" or None). An ELF's run with a file
    #: view has them (its kernel saw the loader map the libraries); a trace's are its own.
    library_names: Callable[[], LibraryNames] | None = None

    @property
    def steps(self) -> int:
        return int(self.registers.shape[0])


class SyscallReplay:
    """Wraps one kernel's `handle`: the recorder's kernel runs, the native results win."""

    def __init__(
        self, inner: BareKernel, syscalls: list[NativeSyscall], mismatches: list[str]
    ) -> None:
        self.inner = inner
        self.inner_handle = inner.handle
        self.native = deque(syscalls)
        self.mismatches = mismatches

    def handle(self, uc: Uc, step: int) -> None:
        nr = int(uc.reg_read(x86.UC_X86_REG_RAX))
        record = self.native.popleft() if self.native else None
        matches = record is not None and record.nr == nr
        succeeded = record is not None and record.result < 1 << 63
        moved: list[tuple[int, int]] = []
        if matches and nr == _SYS_MMAP and succeeded:
            # Map it where the native kernel did; the registers come back after.
            assert record is not None
            for reg, value in ((x86.UC_X86_REG_RDI, record.result), (x86.UC_X86_REG_R10, None)):
                old = int(uc.reg_read(reg))
                moved.append((reg, old))
                uc.reg_write(reg, value if value is not None else old | _MAP_FIXED)
        self.inner_handle(uc, step)
        for reg, old in moved:
            uc.reg_write(reg, old)
        if self.inner.stop is not None:
            return
        if record is None or not matches:
            native = f"{record.nr} ({record.name})" if record else "none"
            self.mismatches.append(
                f"step {step}: the emulation made system call {nr} where the native run made "
                f"{native}; the recorder's answer was kept"
            )
            return
        uc.reg_write(x86.UC_X86_REG_RAX, record.result & _MASK64)
        for addr, data in record.buffers:
            if self.inner.mapped(uc, addr, len(data)):
                self.inner.write_memory(addr, data)
            else:
                self.mismatches.append(f"step {step}: {record.name} filled {addr:#x}, unmapped")


class ReplayingCpu(CpuModel):
    """The recorder's CPU model, with the native run's answers to cpuid, xgetbv,
    rdtsc, rdtscp, rdrand and rdseed."""

    def __init__(
        self,
        cpuid: list[CpuidRecord],
        xgetbv: list[XgetbvRecord],
        values: list[ValueRecord],
        mismatches: list[str],
    ) -> None:
        super().__init__()
        self.native_cpuid = deque(cpuid)
        self.native_xgetbv = deque(xgetbv)
        self.native_values = deque(values)
        self.mismatches = mismatches
        #: Value instructions (rdrand ...) the native run had no answer for (the
        #: model's instead): (mnemonic, answers given before it, rip when answered).
        self.unreplayed: list[tuple[str, int, int]] = []
        self.answers_given = 0

    def cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:  # type: ignore[override]
        record = self.native_cpuid.popleft() if self.native_cpuid else None
        if record is None or (record.leaf, record.subleaf) != (leaf, subleaf):
            self.mismatches.append(f"cpuid {leaf:#x}.{subleaf} is not the native run's next one")
            return CpuModel.cpuid(leaf, subleaf)
        return record.eax, record.ebx, record.ecx, record.edx

    def answer(self, uc: Uc, insn: Any) -> None:
        self.answers_given += 1
        if insn.mnemonic == "xgetbv" and self.native_xgetbv:
            record = self.native_xgetbv.popleft()
            uc.reg_write(x86.UC_X86_REG_RAX, record.eax)
            uc.reg_write(x86.UC_X86_REG_RDX, record.edx)
        elif insn.mnemonic in VALUE_MNEMONICS and self.native_values:
            value = self.native_values.popleft()
            if value.mnemonic != insn.mnemonic:
                native = value.mnemonic
                self.mismatches.append(f"{insn.mnemonic} is not the native run's next {native}")
                super().answer(uc, insn)
                return
            for name in _written_by(insn):
                after = value.after[name]
                if name == "rflags":  # the arithmetic flags only: TF and IF are the stepper's
                    after = (uc.reg_read(x86.UC_X86_REG_RFLAGS) & ~_ARITH_FLAGS) | (
                        after & _ARITH_FLAGS
                    )
                uc.reg_write(UC_IDS[REGISTERS.index(name)], after)
        else:
            if insn.mnemonic in VALUE_MNEMONICS:
                rip = int(uc.reg_read(x86.UC_X86_REG_RIP))
                self.unreplayed.append((insn.mnemonic, self.answers_given - 1, rip))
            super().answer(uc, insn)


#: The instructions whose answers come from the CPU's counter or random source.
VALUE_MNEMONICS = ("rdtsc", "rdtscp", "rdrand", "rdseed")
#: CF, PF, AF, ZF, SF, OF.
_ARITH_FLAGS = 0x8D5


def _written_by(insn: Any) -> tuple[str, ...]:
    """The registers (trace columns) a value instruction sets: what is replayed."""
    if insn.mnemonic == "rdtsc":
        return ("rax", "rdx")
    if insn.mnemonic == "rdtscp":
        return ("rax", "rdx", "rcx")
    # Here, not at import: the analysis package is not needed to compare.
    from ..analysis.decoded import register_column

    destination = register_column(insn.reg_name(insn.operands[0].reg))  # rdrand/rdseed
    return (destination, "rflags") if destination else ("rflags",)


def replaying(spec: MachineSpec, native: NativeRun, mismatches: list[str]) -> MachineSpec:
    """`spec` with a kernel and a CPU that answer as the native run was answered."""
    make_kernel = spec.kernel

    def replaying_kernel() -> BareKernel:
        kernel = make_kernel()
        # The machine calls `kernel.handle`; everything else it reads stays the kernel's own.
        kernel.handle = SyscallReplay(kernel, native.syscalls, mismatches).handle  # type: ignore[method-assign]
        return kernel

    return replace(
        spec,
        kernel=replaying_kernel,
        cpu=lambda: ReplayingCpu(native.cpuid, native.xgetbv, native.values, mismatches),
    )


class ThreadsNotCompared(BadInput):
    """The emulated program made a thread: the native side cannot follow it yet."""


def emulate(
    spec: MachineSpec,
    native: NativeRun | None,
    max_steps: int,
    start: int | None = None,
    interp: ElfImage | None = None,
) -> EmulatedRun:
    """Run the machine to its stop; rows as a (steps, registers) array.

    `start` (`--from`): first run there without recording, as `record --from`
    does (Machine.fast_forward: a step counter and the step rules, no
    per-row hooks); the rows begin there. `interp`: the program's
    interpreter, named with the libraries (`EmulatedRun.library_names`)."""
    mismatches: list[str] = []
    machine = Machine(replaying(spec, native, mismatches) if native is not None else spec)
    if start is not None:
        early = machine.fast_forward(start)
        unreplayed = _unreplayed_before(machine.cpu, start)
        if early is not None:
            return EmulatedRun(
                registers=np.zeros((0, len(REGISTERS)), dtype=np.uint64),
                stop_reason=early.reason,
                stop_step=-1,
                stop_detail=f"before --from: {early.detail}",
                stdout=bytes(machine.kernel.stdout),
                stderr=bytes(machine.kernel.stderr),
                replay_mismatches=mismatches,
                unreplayed_before_start=unreplayed,
            )
    chunks: list[bytes] = []
    writes: list[np.ndarray] = []

    def on_chunk(chunk: Chunk) -> None:
        chunks.append(chunk.registers)
        events = events_array(chunk.events)
        writes.append(events[events[:, 1] == MEM_WRITE][:, [0, 2, 3, 4]])

    answered_in_start_up = getattr(machine.cpu, "answers_given", 0)
    result = machine.run(max_steps, 1 << 16, on_chunk)
    if result.threads:  # the native run stops at clone: the runs would differ there
        raise ThreadsNotCompared("threads are not compared yet (the program makes threads)")
    before_start = (
        _unreplayed_before(machine.cpu, start, answered_in_start_up) if start is not None else []
    )
    rows = np.concatenate(
        [np.frombuffer(c, dtype="<u8").reshape(len(REGISTERS), -1).T for c in chunks]
        or [np.zeros((0, len(REGISTERS)), dtype=np.uint64)]
    )
    kernel = machine.kernel
    return EmulatedRun(
        registers=rows,
        stop_reason=result.stop.reason,
        stop_step=result.stop.step,
        stop_detail=result.stop.detail,
        stdout=result.stdout,
        stderr=result.stderr,
        replay_mismatches=mismatches,
        unreplayed_before_start=before_start,
        writes=np.concatenate(writes) if writes else np.zeros((0, 4), dtype=np.int64),
        library_names=(
            (lambda: library_names(kernel, interp)) if hasattr(kernel, "file_maps") else None
        ),
    )


def library_names(kernel: Any, interp: ElfImage | None = None) -> LibraryNames:
    """The symbols and source lines of the interpreter and every library `kernel`
    (a FileKernel) saw the loader map, where it mapped them: the recorder's own
    reading of them (record/linux/dynamic.py, as `record` names a dynamic
    program's frames for `check` and `show`)."""
    from ..record.linux.dwarf_lines import ObjectLines
    from ..record.linux.dynamic import line_indexes, loaded_objects, merged_symbols

    images = [*([interp] if interp is not None else []), *(o.image for o in loaded_objects(kernel))]
    symbols, _raw = merged_symbols(images)
    lines = ObjectLines(None, line_indexes(images))

    def line_of(addr: int) -> str | None:
        found = lines.nearest(addr)
        return f"{found.file}:{found.line}" if found is not None and found.line else None

    return symbols, line_of


def _unreplayed_before(cpu: Any, start: int, answered: int | None = None) -> list[str]:
    """The value instructions of the start-up (before --from) the native run gave no
    answer for. The last one before `start` is answered at `start` itself (at
    the next instruction: record/machine/cpu.py), the first answer of the run."""
    if not isinstance(cpu, ReplayingCpu):
        return []
    limit = cpu.answers_given if answered is None else answered
    return [
        mnemonic
        for mnemonic, index, rip in cpu.unreplayed
        if index < limit or (index == limit and rip == start)
    ]
