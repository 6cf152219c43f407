"""The CPU model: what `cpuid`, `xgetbv`, `rdtsc`, `rdtscp`, `rdrand` and `rdseed` answer.

Unicorn answers these from its own model or from the host, so a recording
would differ from machine to machine, and real C libraries pick their string
functions by `cpuid` (glibc takes `__strlen_avx2` when AVX2 is announced,
which unicorn cannot run). Here every one of them gives a fixed, documented
value (docs/machine.md, "The CPU"):

- `cpuid`: the table `CPUID` below: GenuineIntel, SSE up to 4.2, POPCNT,
  CX16; no XSAVE/OSXSAVE, no AVX, AVX2, AVX-512, FMA, BMI, ADX, SHA, RDRAND,
  RDSEED (they are in the ISA unicorn runs, or not, but the promise is what
  glibc and Rust's std pick from).
- `xgetbv`: XCR0 = 3 (x87 and SSE state).
- `rdtsc`/`rdtscp`: a counter that starts at `TSC_START` and grows by
  `TSC_STEP` at each read (so calibration loops end); `rdtscp` sets ecx = 0.
- `rdrand`/`rdseed`: `RANDOM_VALUE` cut to the operand size, CF = 1.

`cpuid` has an instruction hook in unicorn. The others do not
(`UC_HOOK_INSN` covers only cpuid, syscall and in/out): the machine's code
hook decides each executed address once (record/machine/user_mode.py, `Decisions`),
code written at run time included, and when one of these has just run, it
calls `answer` at the next instruction, before that row is read. Unicorn
runs the instruction itself; `answer` replaces what it gave with the fixed
value. (Changing the registers on the instruction itself would show its
result in its own row, whose registers are read before it runs: the silicon
check caught that.)
"""

from __future__ import annotations

from typing import Any

import unicorn.x86_const as x86
from unicorn import UC_HOOK_INSN
from unicorn.unicorn_py3.unicorn import Uc

from .registers import RegisterBatch

MASK64 = (1 << 64) - 1
TSC_START = 1_000_000_000
TSC_STEP = 1_000
RANDOM_VALUE = 0x5EED_5EED_5EED_5EED
XCR0 = 0x3
_CF = 0x1
_ARITH_FLAGS = 0x8D5  # CF PF AF ZF SF OF

# Leaf 1 feature bits.
_EDX1 = sum(
    1 << bit
    for bit in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 19, 23, 24, 25, 26)
)  # fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush
#    mmx fxsr sse sse2
_ECX1 = sum(1 << bit for bit in (0, 9, 13, 19, 20, 23))  # sse3 ssse3 cx16 sse4.1 sse4.2 popcnt


def _brand(text: str) -> list[tuple[int, int, int, int]]:
    raw = text.encode().ljust(48, b"\0")
    words = [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 48, 4)]
    return [(words[i], words[i + 1], words[i + 2], words[i + 3]) for i in range(0, 12, 4)]


_BRAND = _brand("stacktrace-lab fixed x86-64 CPU")

#: (leaf, subleaf) -> (eax, ebx, ecx, edx). Subleaf None: any subleaf.
CPUID: dict[tuple[int, int | None], tuple[int, int, int, int]] = {
    (0, None): (0x7, 0x756E6547, 0x6C65746E, 0x49656E69),  # max leaf 7, "GenuineIntel"
    (1, None): (0x000306A9, 0x00010800, _ECX1, _EDX1),  # family 6 model 58; 1 logical CPU
    # Leaf 2 descriptor 0xff: "read the caches from leaf 4".
    (2, None): (0x00FF0001, 0, 0, 0),
    # Leaf 4: L1d 32 KiB, L1i 32 KiB, L2 256 KiB, L3 8 MiB, all 64-byte lines.
    (4, 0): (0x121, 0x01C0003F, 63, 0),
    (4, 1): (0x122, 0x01C0003F, 63, 0),
    (4, 2): (0x143, 0x00C0003F, 1023, 0),
    (4, 3): (0x163, 0x03C0003F, 8191, 0),
    (7, None): (0, 0, 0, 0),  # no AVX2, BMI, AVX-512, ADX, SHA, ERMS, FSRM
    (0x80000000, None): (0x80000008, 0, 0, 0),
    (0x80000001, None): (0, 0, 0x1, (1 << 11) | (1 << 20) | (1 << 27) | (1 << 29)),
    (0x80000002, None): _BRAND[0],
    (0x80000003, None): _BRAND[1],
    (0x80000004, None): _BRAND[2],
    (0x80000006, None): (0, 0, (256 << 16) | (0x6 << 12) | 64, 0),
    (0x80000008, None): (0x3030, 0, 0, 0),
}


#: cpuid's leaf and subleaf, and the four registers it answers in.
_CPUID_READS = RegisterBatch((x86.UC_X86_REG_EAX, x86.UC_X86_REG_ECX))
_CPUID_WRITES = RegisterBatch(
    (x86.UC_X86_REG_RAX, x86.UC_X86_REG_RBX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX)
)


class CpuModel:
    """Installs the fixed answers on one unicorn instance."""

    def __init__(self) -> None:
        self.tsc = TSC_START

    def install(self, uc: Uc) -> None:
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, x86.UC_X86_INS_CPUID)

    @staticmethod
    def cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        return CPUID.get((leaf, subleaf)) or CPUID.get((leaf, None)) or (0, 0, 0, 0)

    def _on_cpuid(self, uc: Uc, _user: Any) -> bool:
        leaf, subleaf = (value & 0xFFFFFFFF for value in _CPUID_READS.read(uc))
        _CPUID_WRITES.write(uc, self.cpuid(leaf, subleaf))
        return True  # skip unicorn's own cpuid

    def answer(self, uc: Uc, insn: Any) -> None:
        """Give the instruction that just ran (`insn`) its fixed result."""
        if insn.mnemonic in ("rdtsc", "rdtscp"):
            value = self.tsc
            self.tsc += TSC_STEP
            uc.reg_write(x86.UC_X86_REG_RAX, value & 0xFFFFFFFF)
            uc.reg_write(x86.UC_X86_REG_RDX, value >> 32)
            if insn.mnemonic == "rdtscp":
                uc.reg_write(x86.UC_X86_REG_RCX, 0)
        elif insn.mnemonic == "xgetbv":
            uc.reg_write(x86.UC_X86_REG_RAX, XCR0)
            uc.reg_write(x86.UC_X86_REG_RDX, 0)
        else:  # rdrand, rdseed
            operand = insn.operands[0]
            name = insn.reg_name(operand.reg)
            full = getattr(x86, f"UC_X86_REG_{full_register(name).upper()}")
            value = RANDOM_VALUE & ((1 << (8 * operand.size)) - 1)
            if operand.size == 2:  # a 16-bit write keeps the upper bytes
                value |= uc.reg_read(full) & ~0xFFFF & MASK64
            uc.reg_write(full, value)
            flags = uc.reg_read(x86.UC_X86_REG_RFLAGS)
            uc.reg_write(x86.UC_X86_REG_RFLAGS, (flags & ~_ARITH_FLAGS) | _CF)


_LEGACY = {"ax": "rax", "bx": "rbx", "cx": "rcx", "dx": "rdx"}
_LEGACY |= {"si": "rsi", "di": "rdi", "bp": "rbp", "sp": "rsp"}


def full_register(name: str) -> str:
    """The 64-bit register that holds `name` (eax -> rax, r9d -> r9, si -> rsi)."""
    if name.startswith("r") and name[1:2].isdigit():
        return name.rstrip("dwb")
    if name.startswith(("e", "r")) and len(name) == 3:
        return "r" + name[1:]
    return _LEGACY.get(name, name)
