"""The emulated side: the recorder's machine, given the native run's outside world.

`ReplayingMachine` is the recorder's `Machine` with three answers taken from
the native log instead of from unicorn or the recorder's own system calls:
system call results (and the buffers the kernel filled), `cpuid` and
`xgetbv`. Each is replayed in the order the native run met them, so the
comparison tests the CPU model, not the machine it ran on. Without a native
log (`replay=False`) it is exactly the recorder's machine.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import unicorn.x86_const as x86
from unicorn import UC_HOOK_CODE, UC_HOOK_INSN
from unicorn.unicorn_py3.unicorn import UcError

from ..arch import REGISTERS
from ..record.machine import Chunk, Machine, MachineSpec
from .native import CpuidRecord, NativeRun, SyscallRecord, XgetbvRecord

_MASK64 = (1 << 64) - 1


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

    @property
    def steps(self) -> int:
        return int(self.registers.shape[0])


class ReplayingMachine(Machine):
    def __init__(self, spec: MachineSpec, native: NativeRun | None) -> None:
        super().__init__(spec)
        self.mismatches: list[str] = []
        self.syscalls: deque[SyscallRecord] = deque(native.syscalls if native else ())
        self.cpuid: deque[CpuidRecord] = deque(native.cpuid if native else ())
        self.xgetbv: deque[XgetbvRecord] = deque(native.xgetbv if native else ())
        if native is None:
            return
        # Registered before `run()` adds the recording hooks: unicorn calls
        # hooks in the order they were added, so a replayed value is in place
        # before the next row is read.
        self.uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, x86.UC_X86_INS_CPUID)
        xgetbv_sites = {int(native.registers[r.step, 0]) for r in native.xgetbv if r.step >= 0}
        for site in xgetbv_sites:
            self.uc.hook_add(UC_HOOK_CODE, self._on_xgetbv_site, site, site, site + 3)
        self._xgetbv_pending = False

    def _on_syscall(self, uc: Any, user: Any) -> None:
        number = int(uc.reg_read(x86.UC_X86_REG_RAX))
        record = self.syscalls.popleft() if self.syscalls else None
        super()._on_syscall(uc, user)  # the CPU's part, output capture, exit
        if record is None or self._stop is not None:
            return
        if record.nr != number:
            self.mismatches.append(
                f"the emulation made system call {number} where the native run made "
                f"{record.nr} ({record.name})"
            )
            return
        uc.reg_write(x86.UC_X86_REG_RAX, record.result & _MASK64)
        for addr, data in record.buffers:
            try:
                uc.mem_write(addr, data)
            except UcError:
                self.mismatches.append(f"{record.name} filled {addr:#x}, unmapped here")

    def _on_cpuid(self, uc: Any, _user: Any) -> int:
        leaf = int(uc.reg_read(x86.UC_X86_REG_RAX)) & 0xFFFFFFFF
        subleaf = int(uc.reg_read(x86.UC_X86_REG_RCX)) & 0xFFFFFFFF
        record = self.cpuid.popleft() if self.cpuid else None
        if record is None or (record.leaf, record.subleaf) != (leaf, subleaf):
            self.mismatches.append(f"cpuid leaf {leaf:#x}.{subleaf} not in the native log")
            return 0  # unicorn answers
        for reg, value in (
            (x86.UC_X86_REG_RAX, record.eax),
            (x86.UC_X86_REG_RBX, record.ebx),
            (x86.UC_X86_REG_RCX, record.ecx),
            (x86.UC_X86_REG_RDX, record.edx),
        ):
            uc.reg_write(reg, value)
        return 1  # skip unicorn's own cpuid

    def _on_xgetbv_site(self, uc: Any, address: int, _size: int, site: int) -> None:
        # A code hook runs before its instruction: note the xgetbv, and give
        # eax:edx the native values before the instruction after it.
        if address == site:
            self._xgetbv_pending = True
        elif address == site + 3 and self._xgetbv_pending:
            self._xgetbv_pending = False
            record = self.xgetbv.popleft() if self.xgetbv else None
            if record is not None:
                uc.reg_write(x86.UC_X86_REG_RAX, record.eax)
                uc.reg_write(x86.UC_X86_REG_RDX, record.edx)


def emulate(spec: MachineSpec, native: NativeRun | None, max_steps: int) -> EmulatedRun:
    """Run the machine to its stop; rows as a (steps, registers) array."""
    machine = ReplayingMachine(spec, native)
    chunks: list[bytes] = []

    def on_chunk(chunk: Chunk) -> None:
        chunks.append(chunk.registers)

    result = machine.run(max_steps, 1 << 16, on_chunk)
    rows = np.frombuffer(b"".join(chunks), dtype=np.uint64).reshape(-1, len(REGISTERS))
    return EmulatedRun(
        registers=rows,
        stop_reason=result.stop.reason,
        stop_step=result.stop.step,
        stop_detail=result.stop.detail,
        stdout=result.stdout,
        stderr=result.stderr,
        replay_mismatches=machine.mismatches,
    )
