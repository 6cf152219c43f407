"""The keystone boundary: radix, syntaxes, region symbols, labels and error lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs

from stacktrace_lab.errors import BadInput
from stacktrace_lab.layout import CODE_BASE
from stacktrace_lab.record.asm.assembler import assemble, explicit_radix, labels_of_line
from stacktrace_lab.record.recorder import build_program
from stacktrace_lab.scenario import Scenario, load_scenario


def _scenario(source: str, syntax: str = "att") -> Scenario:
    return Scenario(name="t", description="", syntax=syntax, entry="main", source=source, stacks=())


def _disassemble(code: bytes) -> list[str]:
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    cs.syntax = CS_OPT_SYNTAX_ATT
    return [f"{i.mnemonic} {i.op_str}".strip() for i in cs.disasm(code, CODE_BASE)]


def test_bare_numbers_stay_decimal_in_att() -> None:
    # With keystone's syntax option set, 32 would silently become 0x32 = 50.
    program = assemble(_scenario("main:\n mov $32, %edx\n movq %rcx, 32(%rax)"), {})
    assert _disassemble(program.code) == ["movl $0x20, %edx", "movq %rcx, 0x20(%rax)"]


def test_intel_syntax_is_decimal_too() -> None:
    program = assemble(_scenario("main:\n mov edx, 32\n mov qword ptr [rax+32], rcx", "intel"), {})
    assert _disassemble(program.code) == ["movl $0x20, %edx", "movq %rcx, 0x20(%rax)"]


def test_att_and_intel_assemble_to_the_same_bytes() -> None:
    att = assemble(_scenario("main:\n push %rbp\n mov %rsp, %rbp\n lea 16(%rdi), %rax\n ret"), {})
    intel = assemble(
        _scenario("main:\n push rbp\n mov rbp, rsp\n lea rax, [rdi+16]\n ret", "intel"), {}
    )
    assert att.code == intel.code


def test_region_symbols_are_visible() -> None:
    program = assemble(_scenario("main:\n movabs $green_base, %rax"), {"green_base": 0x10011FD0})
    assert _disassemble(program.code) == ["movabsq $0x10011fd0, %rax"]


def test_label_addresses_and_local_labels() -> None:
    source = "main:\n nop\n jmp .Lnext\n.Lnext:\n nop\nhello: nop\n ret"
    program = assemble(_scenario(source), {})
    assert program.labels == {"main": CODE_BASE, ".Lnext": CODE_BASE + 3, "hello": CODE_BASE + 4}
    assert program.symbols == {"main": CODE_BASE, "hello": CODE_BASE + 4}
    # The trailer used to read label addresses is not part of the code.
    assert _disassemble(program.code) == ["nop", "jmp 0x400003", "nop", "nop", "retq"]


def test_labels_of_line_ignores_comments_and_strings() -> None:
    assert labels_of_line("a: b:  nop  # c: not a label") == ["a", "b"]
    assert labels_of_line('  .ascii "x: y"') == []
    assert labels_of_line("  mov %rax, %rbx") == []


def test_first_switch_disassembles_back_to_its_source() -> None:
    scenario = load_scenario("first-switch")
    program, _ = build_program(scenario)
    hello = program.labels["hello"]
    listing = _disassemble(program.code[: hello - CODE_BASE + 24])
    assert listing[:12] == [
        "pushq %rbp",
        "movq %rsp, %rbp",
        "subq $0x10, %rsp",
        "movq $0, (%rsp)",
        "movabsq $0x10011fd0, %rax",
        f"movabsq ${hello:#x}, %rcx",
        "movq %rcx, 0x20(%rax)",
        "leaq 0x20(%rax), %rdx",
        "movq %rdx, (%rsp)",
        "movq %rsp, %rdi",
        f"callq {program.labels['gt_switch']:#x}",
        "leave",
    ]
    assert listing[13:15] == ["movq (%rdi), %rsp", "retq"]


@pytest.mark.parametrize(
    ("source", "line", "message"),
    [
        ("main:\n nop\n bogus %rax\n nop", 3, "unknown instruction: bogus %rax"),
        ("main:\n nop\n\n mov $1, %rax\n jmp nowhere\n ret", 5, "undefined symbol 'nowhere'"),
        ("main:\n nop\n mov (%rax, %rbx\n jmp later\nlater: ret", 3, "mov (%rax, %rbx"),
    ],
)
def test_errors_name_the_file_and_line(
    write_scenario, source: str, line: int, message: str
) -> None:
    path: Path = write_scenario(source)
    scenario = load_scenario(path)
    with pytest.raises(BadInput) as info:
        build_program(scenario)
    # Inline source starts on the line after `source = """` in the TOML file.
    toml_line = path.read_text().splitlines().index('source = """') + 1 + line
    text = str(info.value)
    assert text.startswith(f"{path}:{toml_line}: ")
    assert message in text


def test_error_line_in_a_separate_asm_file(tmp_path: Path) -> None:
    (tmp_path / "prog.s").write_text("main:\n    nop\n    movq %rax, %%rbx\n    ret\n")
    (tmp_path / "s.toml").write_text(
        'name = "s"\n[[stacks]]\nname = "main"\nsize = 4096\n[program]\nfile = "prog.s"\n'
    )
    with pytest.raises(BadInput, match=r"prog\.s:3: .*movq %rax, %%rbx"):
        build_program(load_scenario(tmp_path / "s.toml"))


def test_missing_entry_label(write_scenario) -> None:
    path = write_scenario("start:\n ret", entry="main")
    with pytest.raises(BadInput, match="entry label 'main' is not defined"):
        build_program(load_scenario(path))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("mov $32, %edx  # 32 bytes", "mov $0x20, %edx  "),
        ("movq %rcx, SSIZE-16(%rax)", "movq %rcx, SSIZE-0x10(%rax)"),
        ("lea 16(%rsp,%rax,8), %r8", "lea 0x10(%rsp,%rax,0x8), %r8"),
        ('.ascii "I LOVE 42\\n"', '.ascii "I LOVE 42\\n"'),
        ("mov 0x20(%rdi), %xmm0", "mov 0x20(%rdi), %xmm0"),
        ("mov rax, qword ptr [rbp-8]", "mov rax, qword ptr [rbp-0x8]"),
        ("label2: dec %r15d", "label2: dec %r15d"),
        ("mov $010, %rax", "mov $010, %rax"),
        (".byte 0, 10, 255", ".byte 0x0, 0xa, 0xff"),
    ],
)
def test_explicit_radix(line: str, expected: str) -> None:
    assert explicit_radix(line) == expected


def test_two_labels_at_one_address_are_named_the_same_everywhere(record_source) -> None:
    # `start` and `main` mark one address: the alphabetically first names it,
    # in the trace's symbol column and in the analysis (read back from the
    # metadata, whose keys are sorted) alike.
    from stacktrace_lab.analysis.events import derive_facts
    from stacktrace_lab.trace import load_trace

    recording = record_source("start:\nmain:\n nop\n ret", entry="main")
    trace = load_trace(recording.path)
    assert list(trace.rows(["symbol"])["symbol"].astype(str)) == ["main+0", "main+1"]
    assert derive_facts(trace).symbolize(recording.metadata.symbols["start"]) == "main"
