"""Instructions decoded from their bytes (capstone's detail mode): operands, registers, ids.

Each case gives the bytes an assembler writes for the AT&T text in its name;
the analyses never read that text, only what is decoded here.
"""

from __future__ import annotations

import pytest
from capstone import x86 as cs_x86

from stacktrace_lab.analysis.decoded import (
    INVALID,
    Decoded,
    OperandType,
    decode,
    register_column,
)

RIP = 0x400000


def _decode(hex_bytes: str) -> Decoded:
    return decode(RIP, bytes.fromhex(hex_bytes))


def test_load_with_base_index_scale_and_displacement() -> None:
    insn = _decode("488b4cd820")  # movq 0x20(%rax,%rbx,8), %rcx
    assert insn.id == cs_x86.X86_INS_MOV
    destination, source = insn.operands
    assert destination.type is OperandType.REG and destination.register == "rcx"
    assert destination.written and not destination.read and destination.size == 8
    assert source.type is OperandType.MEM and source.read and not source.written
    assert (source.base, source.index, source.scale, source.disp) == ("rax", "rbx", 8, 0x20)
    assert source.segment is None
    # the trace's AT&T text of each operand, for messages
    assert (destination.text, source.text) == ("%rcx", "0x20(%rax, %rbx, 8)")
    assert insn.writes_register("rcx") and not insn.writes_register("rax")


def test_store_destination_is_the_memory_operand() -> None:
    insn = _decode("48894820")  # movq %rcx, 0x20(%rax)
    assert insn.destination is not None and insn.destination.type is OperandType.MEM
    assert insn.destination.base == "rax" and insn.destination.written
    assert insn.source is not None and insn.source.register == "rcx"


@pytest.mark.parametrize(
    ("hex_bytes", "text", "destination", "source"),
    [
        ("89c8", "mov %ecx, %eax", "rax", "rcx"),
        ("6689c8", "mov %cx, %ax", "rax", "rcx"),
        ("88e3", "mov %ah, %bl", "rbx", "rax"),  # no REX: byte register 4 is ah
        ("4088e3", "mov %spl, %bl", "rbx", "rsp"),  # with REX: byte register 4 is spl
        ("4188f1", "mov %sil, %r9b", "r9", "rsi"),
        ("4589c8", "mov %r9d, %r8d", "r8", "r9"),
        ("4c89f8", "mov %r15, %rax", "rax", "r15"),
    ],
)
def test_sub_registers_are_their_64_bit_register(
    hex_bytes: str, text: str, destination: str, source: str
) -> None:
    insn = _decode(hex_bytes)
    assert [op.register for op in insn.operands] == [destination, source], text
    assert insn.writes_register(destination)


def test_register_names_map_to_trace_columns() -> None:
    assert register_column("ecx") == "rcx" and register_column("r9d") == "r9"
    assert register_column("dil") == "rdi" and register_column("BH") == "rbx"
    assert register_column("rip") == "rip"
    assert register_column("xmm0") is None and register_column("fs") is None


def test_rip_relative_lea() -> None:
    insn = _decode("488d3d10000000")  # lea 0x10(%rip), %rdi
    assert insn.id == cs_x86.X86_INS_LEA and insn.writes_register("rdi")
    address = insn.source
    assert address is not None and address.type is OperandType.MEM
    assert (address.base, address.index, address.disp) == ("rip", None, 0x10)
    assert address.text == "0x10(%rip)"


def test_push_has_a_source_and_no_destination_operand() -> None:
    insn = _decode("55")  # push %rbp
    assert insn.id == cs_x86.X86_INS_PUSH and insn.destination is None
    assert insn.source is not None and insn.source.register == "rbp" and insn.source.read
    immediate = _decode("6a05")  # pushq $5
    assert immediate.source is not None and immediate.source.type is OperandType.IMM
    assert immediate.source.imm == 5 and immediate.source.text == "$5"


def test_movabs_immediates_are_signed_64_bit() -> None:
    insn = _decode("48b88877665544332211")  # movabs $0x1122334455667788, %rax
    assert insn.id == cs_x86.X86_INS_MOVABS and insn.writes_register("rax")
    assert insn.source is not None and insn.source.imm == 0x1122334455667788
    assert insn.source.text == "$0x1122334455667788"
    minus_one = _decode("48b8ffffffffffffffff")  # movabs $0xffffffffffffffff, %rax
    assert minus_one.source is not None and minus_one.source.imm == -1


def test_segment_override() -> None:
    insn = _decode("64488b042528000000")  # mov %fs:0x28, %rax
    source = insn.source
    assert source is not None and source.type is OperandType.MEM
    assert (source.segment, source.base, source.index, source.disp) == ("fs", None, None, 0x28)
    assert source.text == "%fs:0x28"


def test_string_instructions_keep_both_operands_in_intel_order() -> None:
    # capstone's AT&T mode would give stosq a single operand, the memory as read
    insn = _decode("48ab")  # stosq %rax, (%rdi)
    destination, source = insn.operands
    assert destination.type is OperandType.MEM and destination.base == "rdi"
    assert destination.written and not destination.read
    assert source.register == "rax" and source.read
    movs = _decode("f348a5")  # rep movsq (%rsi), (%rdi)
    assert [(op.base, op.read, op.written) for op in movs.operands] == [
        ("rdi", False, True),
        ("rsi", True, False),
    ]


def test_bytes_that_do_not_decode() -> None:
    assert _decode("") is INVALID and _decode("ffff") is INVALID
    assert INVALID.operands == () and INVALID.source is None and INVALID.destination is None


def test_each_distinct_instruction_is_decoded_once() -> None:
    first = decode(RIP + 0x100, bytes.fromhex("4883e4f0"))
    assert decode(RIP + 0x100, bytes.fromhex("4883e4f0")) is first
