"""Instructions unicorn gets wrong are found from their bytes (record/machine/emulator_gaps.py),
and a recording stops at them as the CPU would (record/machine/user_mode.py's decisions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs

from stacktrace_lab.record.core.hooks import PURE_PYTHON_ENV, native_core
from stacktrace_lab.record.machine.emulator_gaps import MustBeAligned, Unsupported, gap_of
from stacktrace_lab.record.recorder import Recording, record
from stacktrace_lab.scenario import load_scenario

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


def test_other_segments_and_32_bit_addresses_resolve_as_the_cpu_does() -> None:
    # ds: a base of 0 in 64-bit mode (it used to ask unicorn for a `ds_base` it has not).
    ds = _gap("3e0f2803")  # movaps %ds:(%rbx), %xmm0
    assert isinstance(ds, MustBeAligned) and ds.segment is None
    assert ds.address({"rbx": 0x7008}.__getitem__) == 0x7008
    # An address-size prefix cuts the sum to 32 bits.
    short = _gap("670f284308")  # movaps 8(%ebx), %xmm0
    assert isinstance(short, MustBeAligned) and short.address_bits == 32
    assert short.address({"ebx": 0xFFFF_FFF8}.__getitem__) == 0
    eip_relative = _gap("670f28050a000000", 0x401000)  # movaps 0xa(%eip), %xmm0
    assert isinstance(eip_relative, MustBeAligned) and eip_relative.base is None
    assert eip_relative.address(lambda name: 0) == 0x401008 + 0xA


# --- in a recording: the C core and the Python hooks, byte for byte ----------------


def _record_both_ways(
    source: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, write_scenario: Any
) -> Recording:
    """Record `source` with the C core (where built) and the pure-Python hooks;
    the traces must be equal byte for byte. Returns the pure-Python recording."""
    scenario = load_scenario(write_scenario(source, data=(("buf", 4096),)))
    recordings = []
    ways = ["0"] if native_core() is None else ["", "1"]
    for way in ways:
        if way:
            monkeypatch.setenv(PURE_PYTHON_ENV, way)
        else:
            monkeypatch.delenv(PURE_PYTHON_ENV, raising=False)
        recordings.append(record(scenario, tmp_path / f"way{way or 'c'}.parquet"))
    if len(recordings) == 2:
        assert recordings[0].path.read_bytes() == recordings[1].path.read_bytes()
    return recordings[-1]


_LOAD_ONE_HALF = """
    movabsq $0x3fe0000000000000, %rax
    movq %rax, (%rbx)
"""


@pytest.mark.parametrize(
    ("setup", "instruction"),
    [
        (
            "movl $5, (%rbx)\n    movl $7, 16(%rbx)\n    movdqu (%rbx), %xmm0\n"
            "    movdqu 16(%rbx), %xmm1",
            "vpaddd %xmm1, %xmm0, %xmm2",
        ),
        ("movdqu (%rbx), %xmm0\n    movdqu 16(%rbx), %xmm1", "vaddps %xmm1, %xmm0, %xmm2"),
        (_LOAD_ONE_HALF + "    fldl (%rbx)", "fsin"),
        (_LOAD_ONE_HALF + "    fldl (%rbx)", "fcos"),
        (_LOAD_ONE_HALF + "    fldl (%rbx)", "fptan"),
        (_LOAD_ONE_HALF + "    fld1\n    fldl (%rbx)", "fpatan"),
        (_LOAD_ONE_HALF + "    fld1\n    fldl (%rbx)", "fyl2x"),
        (_LOAD_ONE_HALF + "    fldl (%rbx)", "f2xm1"),
    ],
)
def test_an_unsupported_instruction_stops_the_run_before_it_executes(
    setup: str,
    instruction: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    write_scenario: Any,
) -> None:
    source = f"main:\n    movabs $buf_base, %rbx\n    {setup.strip()}\n    {instruction}\n"
    source += "    movq $99, %rax\n    ret\n"
    recording = _record_both_ways(source, monkeypatch, tmp_path, write_scenario)
    meta = recording.metadata
    setup_steps = 1 + len(setup.strip().splitlines())
    assert (meta.stop.reason, meta.stop.step, meta.steps) == (
        "unsupported",
        setup_steps,
        setup_steps + 1,
    )
    rip = meta.final["rip"]
    assert meta.stop.detail.startswith(f"at {rip:#x}: {instruction.split()[0]}")
    assert meta.final["rax"] != 99  # nothing after it ran


_MISALIGNED = [
    "movaps 8(%rbx), %xmm0",
    "addps 8(%rbx), %xmm0",
    "pcmpeqb 8(%rbx), %xmm0",
    "movdqa %xmm0, 8(%rbx)",
    "fxsave 8(%rbx)",
]


@pytest.mark.parametrize("instruction", _MISALIGNED)
def test_a_misaligned_16_byte_operand_is_the_cpus_fault(
    instruction: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, write_scenario: Any
) -> None:
    source = f"main:\n    movabs $buf_base, %rbx\n    {instruction}\n    movq $99, %rax\n    ret\n"
    meta = _record_both_ways(source, monkeypatch, tmp_path, write_scenario).metadata
    assert (meta.stop.reason, meta.stop.step, meta.steps) == ("fault", 1, 2)
    assert meta.final["rax"] != 99
    address = meta.final["rbx"] + 8
    assert meta.stop.detail.startswith("general protection fault (#GP): ")
    assert f"and {address:#x} is not (rip {meta.final['rip']:#x})" in meta.stop.detail


@pytest.mark.parametrize("instruction", [i.replace("8(", "16(") for i in _MISALIGNED])
def test_an_aligned_16_byte_operand_runs(
    instruction: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, write_scenario: Any
) -> None:
    source = (
        "main:\n    movabs $buf_base, %rbx\n    movl $5, 16(%rbx)\n"
        f"    {instruction}\n    movq %xmm0, %rax\n    ret\n"
    )
    meta = _record_both_ways(source, monkeypatch, tmp_path, write_scenario).metadata
    assert meta.stop.reason == "returned"
    expected = {"movaps": 5, "addps": 5, "pcmpeqb": 0xFFFF_FFFF_FFFF_FF00, "movdqa": 0}
    if instruction.split()[0] in expected:
        assert meta.final["rax"] == expected[instruction.split()[0]]


def test_alignment_is_checked_at_every_execution(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, write_scenario: Any
) -> None:
    # The same movaps runs with 16(%rbx) aligned, then with rbx moved by 8.
    source = """
main:
    movabs $buf_base, %rbx
    movq $2, %rcx
again:
    movaps 16(%rbx), %xmm0
    addq $8, %rbx
    decq %rcx
    jnz again
    ret
"""
    meta = _record_both_ways(source, monkeypatch, tmp_path, write_scenario).metadata
    assert (meta.stop.reason, meta.stop.step) == ("fault", 6)
    assert meta.final["rcx"] == 1


def test_pushfq_pushes_the_flags_the_cpu_has(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, write_scenario: Any
) -> None:
    # Issue report: "rflags on the row after pushfq 0x807 where the CPU has
    # CF=OF=0". Not reproduced: -1 + 1 sets CF ZF PF AF (0x257 with IF), the
    # signed overflow OF SF PF AF (0xa96); pushfq/popq give exactly those, and the
    # rows after them still hold them (the CPU's values, checked on silicon).
    source = """
main:
    movq $-1, %rax
    addq $1, %rax
    pushfq
    popq %rcx
    movabsq $0x7fffffffffffffff, %rax
    addq $1, %rax
    pushfq
    popq %rdx
    ret
"""
    recording = _record_both_ways(source, monkeypatch, tmp_path, write_scenario)
    final = recording.metadata.final
    assert (final["rcx"], final["rdx"], final["rflags"]) == (0x257, 0xA96, 0xA96)


def test_alignment_of_indexed_and_rip_relative_operands_in_a_recording(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, write_scenario: Any
) -> None:
    # base + index * scale + disp, and rip-relative: the C core's sum and the
    # Python hooks' agree (byte-identical traces) and fault where the CPU would.
    source = """
main:
    movabs $buf_base, %rbx
    movq $3, %rcx
    movaps 8(%rbx,%rcx,8), %xmm0
    movaps aligned(%rip), %xmm1
    movq $2, %rcx
    movaps 8(%rbx,%rcx,8), %xmm0
    ret
    .p2align 4
aligned:
    .quad 1, 2
"""
    meta = _record_both_ways(source, monkeypatch, tmp_path, write_scenario).metadata
    assert (meta.stop.reason, meta.stop.step) == ("fault", 5)
    assert f"and {meta.final['rbx'] + 24:#x} is not" in meta.stop.detail


def test_the_c_core_checks_aligned_operands_without_calling_python(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, write_scenario: Any
) -> None:
    # glibc runs movaps/movdqa in its hot loops: an aligned execution must not
    # cost a call into Python (the C core computes the address itself).
    if native_core() is None:
        pytest.skip("the C core was not built")
    from stacktrace_lab.record.core.hooks import StepRules

    calls: list[int] = []
    original = StepRules.align_check

    def counting(self: StepRules, address: int) -> None:
        calls.append(address)
        original(self, address)

    monkeypatch.setattr(StepRules, "align_check", counting)
    source = """
main:
    movabs $buf_base, %rbx
    movq $100, %rcx
again:
    movaps 16(%rbx), %xmm0
    movdqa %xmm0, 32(%rbx,%rcx,8)
    subq $2, %rcx
    jnz again
    movaps 24(%rbx), %xmm0
    ret
"""
    scenario = load_scenario(write_scenario(source, data=(("buf", 4096),)))
    meta = record(scenario, tmp_path / "c.parquet").metadata
    assert meta.stop.reason == "fault"
    assert len(calls) == 1  # only the misaligned one, which stops the run
