"""Instructions unicorn gets wrong are found from their bytes (record/emulator_gaps.py)."""

from __future__ import annotations

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs

from stacktrace_lab.record.emulator_gaps import MustBeAligned, Unsupported, gap_of

_cs = Cs(CS_ARCH_X86, CS_MODE_64)
_cs.detail = True
_cs.syntax = CS_OPT_SYNTAX_ATT


def _gap(hex_bytes: str, address: int = 0x1000) -> object:
    insn = next(_cs.disasm(bytes.fromhex(hex_bytes), address, 1))
    return gap_of(insn)


@pytest.mark.parametrize(
    ("code", "mnemonic"),
    [
        ("c5f9fed1", "vpaddd"),  # vpaddd %xmm1, %xmm0, %xmm2
        ("c5f858d1", "vaddps"),
        ("c5f82843 08", "vmovaps"),
        ("62f17c4858c1", "vaddps"),  # EVEX
        ("d9fe", "fsin"),
        ("d9ff", "fcos"),
        ("d9f2", "fptan"),
        ("d9f3", "fpatan"),
        ("d9f1", "fyl2x"),
        ("d9f0", "f2xm1"),
    ],
)
def test_instructions_the_emulator_computes_wrongly_are_unsupported(
    code: str, mnemonic: str
) -> None:
    gap = _gap(code.replace(" ", ""))
    assert isinstance(gap, Unsupported)
    assert gap.detail.startswith(mnemonic)


@pytest.mark.parametrize(
    "code",
    [
        "0f284308",  # movaps 8(%rbx), %xmm0
        "0f584308",  # addps 8(%rbx), %xmm0
        "660f740f",  # pcmpeqb (%rdi), %xmm1
        "660fe707",  # movntdq %xmm0, (%rdi)
        "0fae0424",  # fxsave (%rsp)
        "480fc70f",  # cmpxchg16b (%rdi)
    ],
)
def test_legacy_sse_with_a_16_byte_operand_must_be_aligned(code: str) -> None:
    gap = _gap(code)
    assert isinstance(gap, MustBeAligned)
    registers = {"rbx": 0x10000, "rdi": 0x10008, "rsp": 0x10010}
    address = gap.address(registers.__getitem__)
    assert gap.fault(address - address % 16) is None
    detail = gap.fault(address | 8)
    assert detail is not None and "16-byte aligned" in detail


@pytest.mark.parametrize(
    "code",
    [
        "f30f6f0f",  # movdqu (%rdi), %xmm1
        "0f10 4308",  # movups 8(%rbx), %xmm0
        "0f164308",  # movhps 8(%rbx), %xmm0: 8 bytes
        "660f3a630700",  # pcmpistri $0, (%rdi), %xmm0
        "dd3424",  # fnsave (%rsp): no alignment
        "db2f",  # fldt (%rdi)
        "d9fa",  # fsqrt: exact in unicorn too
        "4801d8",  # add %rbx, %rax
        "8f00",  # pop (%rax), not XOP
    ],
)
def test_instructions_the_emulator_runs_right_are_left_alone(code: str) -> None:
    assert _gap(code.replace(" ", "")) is None


def test_rip_relative_and_segment_operands_resolve_as_the_cpu_does() -> None:
    rip_relative = _gap("0f290510000000", 0x401000)  # movaps %xmm0, 0x10(%rip)
    assert isinstance(rip_relative, MustBeAligned)
    assert rip_relative.address(lambda name: 0) == 0x401007 + 0x10
    fs = _gap("64660f6f042510000000")  # movdqa %fs:0x10, %xmm0
    assert isinstance(fs, MustBeAligned)
    assert fs.address({"fs_base": 0x7000}.__getitem__) == 0x7010
