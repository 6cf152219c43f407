"""The C core's use of capstone's C library (record/core/native_capstone.py) gives
the Python code's answers on the same bytes:

- `Capstone.facts` is `Disassembler.decode` (text, size, kind, bytes) at every
  instruction of a static C program's code (libc included), at bytes inside
  instructions, at the end of a section and outside the code;
- the core decides NORMAL by itself only where `Decisions.decide` (Python) says
  NORMAL: swept over the same program and over instructions that are privileged,
  fixed-value or emulator gaps (a filter that lets `fsin`, `movaps` or `rdrand`
  through as NORMAL fails here).

tests/test_native_core.py checks the same end to end (byte-identical traces)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc

from stacktrace_lab.arch import PAGE
from stacktrace_lab.disassembly import Disassembler
from stacktrace_lab.examples import build_example, compiler_missing
from stacktrace_lab.record.core.hooks import native_module
from stacktrace_lab.record.core.native_capstone import NativeFacts, native_capstone
from stacktrace_lab.record.machine.user_mode import NORMAL, Decisions, _may_matter


@pytest.fixture(scope="module")
def capstone_core() -> Any:
    found = native_capstone(native_module())
    if found is None:
        pytest.skip("the C core is not built (or STACKTRACE_LAB_PURE_PYTHON=1)")
    return found


@pytest.fixture(scope="module")
def code_sections(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, bytes]]:
    why = compiler_missing("c-static")
    if why is not None:
        pytest.skip(why)
    program = build_example("c-static", tmp_path_factory.mktemp("bin"))
    with program.open("rb") as file:
        return [
            (section["sh_addr"], section.data())
            for section in ELFFile(file).iter_sections()
            if section["sh_flags"] & 0x4  # SHF_EXECINSTR
        ]


def sweep(base: int, code: bytes) -> list[int]:
    """Every instruction of a linear sweep, every 7th byte offset (inside
    instructions) and the last 16 offsets (fewer than 16 bytes left)."""
    plain = Disassembler(code, base, {})
    starts, offset = set(range(0, len(code), 7)), 0
    while offset < len(code):
        starts.add(offset)
        offset += plain.decode(base + offset).size
    starts.update(range(max(len(code) - 16, 0), len(code)))
    return [base + offset for offset in sorted(starts)]


def test_facts_are_the_disassemblers(
    capstone_core: Any, code_sections: list[tuple[int, bytes]]
) -> None:
    reference = Disassembler.of_segments(code_sections, {})
    addresses = [a for base, code in code_sections for a in sweep(base, code)]
    lowest = min(base for base, _code in code_sections)
    highest = max(base + len(code) for base, code in code_sections)
    addresses += [0, lowest - 1, highest, highest + 4096]  # outside the code: "(bad)"
    facts = NativeFacts(capstone_core, reference.segments)(np.array(addresses, dtype=np.uint64))
    kinds: set[str] = set()
    for addr, fact in zip(addresses, facts, strict=True):
        want = reference.decode(addr)
        assert fact == (want.text, want.size, want.kind, want.data), f"at {addr:#x}"
        kinds.add(fact[2])
    assert kinds == {"call", "ret", "jmp", "indirect-jmp", "syscall", "other"}
    assert ("(bad)", 1, "other", b"") in facts
    assert len(facts) > 50_000


def test_code_that_ran_elsewhere_is_decoded_from_its_own_bytes(
    capstone_core: Any, code_sections: list[tuple[int, bytes]]
) -> None:
    """`NativeFacts.of_code` (a library's code, a JIT's, rewritten code: the bytes
    that ran there) is `Disassembler.decode(addr, code)`: 16 bytes from each
    instruction of the sweep, fewer at a section's end, none, and bytes that are
    no instruction."""
    reference = Disassembler(b"", 0, {})
    native = NativeFacts(capstone_core, [])
    cases = [
        (addr, code[addr - base : addr - base + 16])
        for base, code in code_sections
        for addr in sweep(base, code)[::5]
    ]
    cases += [(0x1000, b""), (0x2000, b"\x0f"), (0x3000, b"\xff\xff"), (0x4000, b"\xc3" * 40)]
    for addr, code in cases:
        want = reference.decode(addr, code)
        assert native.of_code(addr, code) == (want.text, want.size, want.kind, want.data), (
            f"at {addr:#x}: {code.hex()}"
        )
    assert len(cases) > 10_000


def python_kind(code: bytes, address: int) -> int:
    """What `Decisions.decide` says of `code` placed at `address` in a fresh machine."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    page = address // PAGE * PAGE
    uc.mem_map(page, 2 * PAGE)
    uc.mem_write(address, code)
    return Decisions(uc).decide(address) & 0xFF


#: (AT&T text, bytes) of instructions Python decides other than NORMAL, or that
#: look like them: privileged, fixed-value, emulator gaps, and their harmless kin.
SPECIAL = [
    ("cli", "fa"),
    ("wrmsr", "0f30"),
    ("rdmsr", "0f32"),
    ("in (%dx), %al", "ec"),
    ("outsb", "6e"),
    ("sysenter", "0f34"),
    ("mov %rax, %cr0", "0f22c0"),
    ("rdtsc", "0f31"),
    ("rdtscp", "0f01f9"),
    ("rdrand %rax", "480fc7f0"),
    ("rdseed %eax", "0fc7f8"),
    ("xgetbv", "0f01d0"),
    ("hlt", "f4"),
    ("fsin", "d9fe"),
    ("fld1", "d9e8"),
    ("fxsave (%rax)", "0fae00"),
    ("movaps (%rax), %xmm0", "0f2800"),
    ("movdqa (%rax), %xmm1", "660f6f08"),
    ("pcmpeqb (%rdi), %xmm0", "660f7407"),
    ("movups (%rax), %xmm0", "0f1000"),
    ("movdqu (%rax), %xmm1", "f30f6f08"),
    ("movaps %xmm1, %xmm0", "0f28c1"),
    ("vpaddd %xmm1, %xmm0, %xmm2", "c5f9fed1"),
    ("cmpxchg16b (%rax)", "480fc708"),
    ("cpuid", "0fa2"),
    ("syscall", "0f05"),
]


@pytest.mark.parametrize(("text", "hex_bytes"), SPECIAL, ids=[t for t, _ in SPECIAL])
def test_the_core_asks_python_about_every_instruction_it_does_not_decide_normal(
    capstone_core: Any, text: str, hex_bytes: str
) -> None:
    code = bytes.fromhex(hex_bytes) + b"\x90" * 13
    address = 0x401000
    kind = python_kind(code, address)
    asked = _may_matter(code) and capstone_core.asks_python(code, address)
    assert asked or kind == NORMAL, f"{text}: Python decides {kind}, the core NORMAL"


def test_instructions_python_decides_normal_mostly_stay_in_c(capstone_core: Any) -> None:
    """The point of the filter: `movups` and plain SSE never reach Python."""
    for hex_bytes in ("0f1000", "f30f6f08", "0f28c1", "0fa2", "0f05", "0f1f4000"):
        code = bytes.fromhex(hex_bytes) + b"\x90" * 13
        assert not capstone_core.asks_python(code, 0x401000), hex_bytes


def test_the_core_decides_normal_only_where_python_does(
    capstone_core: Any, code_sections: list[tuple[int, bytes]]
) -> None:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    first = min(base for base, _code in code_sections) // PAGE * PAGE
    end = max(base + len(code) for base, code in code_sections)
    uc.mem_map(first, (end - first + PAGE - 1) // PAGE * PAGE + PAGE)  # a page more: 15 bytes read
    for base, code in code_sections:
        uc.mem_write(base, code)
    decisions = Decisions(uc)
    asked = special = 0
    for base, code in code_sections:
        for addr in sweep(base, code):
            at = code[addr - base : addr - base + 15]
            if not _may_matter(at):
                continue
            kind = decisions.decide(addr) & 0xFF
            asks = capstone_core.asks_python(at, addr)
            asked += asks
            special += kind != NORMAL
            assert asks or kind == NORMAL, f"at {addr:#x}: Python decides {kind}"
    # libc's SSE string functions (movaps, pcmpeqb) and rdtsc/cpuid-style code are
    # in the sweep, so the assertion above had cases to hold.
    assert special > 0 and asked >= special
