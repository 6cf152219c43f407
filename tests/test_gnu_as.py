"""Real assembly in: `.S`/`.s` files as projects ship them, through the GNU-as front end.

Each case from issue 11's "Why" has a test here: what crashed the tool now
assembles (or is one line and exit 2), `.globl` keeps a label's address,
`#if 0` code is not assembled, Intel `[rbx + A + B]` uses A + B, and so on.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from stacktrace_lab.cli import main
from stacktrace_lab.diff import diff_traces
from stacktrace_lab.errors import BadInput
from stacktrace_lab.layout import CODE_BASE
from stacktrace_lab.record.asm.keystone_worker import AssemblerCrash, KeystoneWorker
from stacktrace_lab.record.recorder import Recording, build_program, record
from stacktrace_lab.scenario import load_scenario
from stacktrace_lab.trace import load_trace

REAL_SHAPED = Path(__file__).parent / "asm" / "real_shaped"
Record = Callable[..., Recording]


def _files_scenario(tmp_path: Path, files: dict[str, str], extra: str = "") -> Path:
    """A scenario whose program is `files` (name -> text), listed in order."""
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text).lstrip("\n"))
    names = ", ".join(f'"{n}"' for n in files if not n.endswith(".h"))
    toml = (
        'name = "t"\nentry = "main"\n[[stacks]]\nname = "main"\nsize = 4096\n'
        f"[program]\nfiles = [{names}]\n{extra}\n"
    )
    path = tmp_path / "t.toml"
    path.write_text(toml)
    return path


def _final(recording: Recording, register: str) -> int:
    trace = load_trace(recording.path)
    return int(trace.rows([register])[register].iloc[-1])


# -- the must-show: a real-shaped program records like its hand-cleaned copy


def test_real_shaped_sources_record_the_same_trace_as_a_hand_cleaned_copy(
    tmp_path: Path,
) -> None:
    shaped = record(load_scenario(REAL_SHAPED / "real_shaped.toml"), tmp_path / "shaped.parquet")
    clean = record(load_scenario(REAL_SHAPED / "clean.toml"), tmp_path / "clean.parquet")
    assert shaped.metadata.stop.reason == "returned"
    diff = diff_traces(clean.path, shaped.path)
    assert diff.behaviour_same, diff.first_divergence
    # Only what names the program differs: its name and its source text.
    assert {m.field for m in diff.metadata} <= {"scenario", "source"}
    # 36 from the table (FIRST + SECOND = 12), plus 3 increments: main saw 42
    # and returned instead of calling abort.
    assert _final(shaped, "rax") == 42
    # Each step's source line names its own file: the switch is in switch.S.
    meta = shaped.metadata
    assert meta.source_line(meta.symbols["main"]) == ("main.s", 11)
    switch_lines = (REAL_SHAPED / "switch.S").read_text().splitlines()
    file, line = meta.source_line(meta.symbols["ctx_switch"]) or ("", 0)
    assert file == "switch.S" and switch_lines[line - 1].strip() == "endbr64"


def test_the_real_shaped_program_labels_and_lines() -> None:
    program, regions = build_program(load_scenario(REAL_SHAPED / "real_shaped.toml"))
    assert program.labels["main"] == CODE_BASE
    assert program.labels["ctx_switch"] % 16 == 0  # .p2align 4 honoured
    assert "ctx_switch_old" not in program.labels  # inside #if 0
    assert "abort" in program.labels  # the stub
    data = next(r for r in regions if r.name == ".data")
    assert data.perms == "rw-" and data.base % 4096 == 0
    assert data.base <= program.labels["counter"] < data.top
    assert program.data[:16] == b"".join(v.to_bytes(4, "little") for v in (5, 7, 11, 39))
    # An address maps to the file and line it came from, in either file.
    assert (("main.s", 12)) in program.locations.values()
    assert any(name == "switch.S" for name, _ in program.locations.values())


# -- "Why": what crashed the tool


@pytest.mark.parametrize(
    "source",
    [
        ".text\nmain:\n nop\n ret",
        'main:\n nop\n ret\n.section .note.GNU-stack,"",%progbits',
        '.section .text.startup,"ax",@progbits\nmain:\n nop\n ret',
        # unbalanced: keystone stops the process with "LLVM ERROR: Unfinished frame!"
        "main:\n .cfi_startproc\n nop\n ret",
    ],
)
def test_lines_that_crashed_keystone_now_assemble(write_scenario, source: str) -> None:
    program, _ = build_program(load_scenario(write_scenario(source)))
    assert program.code == b"\x90\xc3"


def test_the_worker_turns_a_segfault_and_an_abort_into_errors() -> None:
    with KeystoneWorker() as worker:
        with pytest.raises(AssemblerCrash, match="SIGSEGV"):
            worker.assemble(".text\nnop", CODE_BASE)
        with pytest.raises(AssemblerCrash, match=r"status 1 \(LLVM ERROR: Unfinished frame!\)"):
            worker.assemble(".cfi_startproc\nnop", CODE_BASE)
        # and a new worker takes over for the next request
        assert worker.assemble("nop", CODE_BASE) == (b"\x90", None)
        assert worker.spawned == 3


def test_the_worker_turns_a_hang_into_an_error() -> None:
    # `%fs:` alone loops forever inside keystone (the front end refuses it; here
    # it goes to the worker directly). `.skip 0x7fffffffff` was used before, but
    # under memory pressure keystone segfaults on it instead of running on.
    with KeystoneWorker(timeout=1.0) as worker, pytest.raises(AssemblerCrash, match="within 1 s"):
        worker.assemble("%fs:", CODE_BASE)


def _crash_behind_the_front_end(monkeypatch: pytest.MonkeyPatch, line: int) -> None:
    """Put a line that crashes keystone past the front end, after source line `line`.

    The front end no longer lets through any input known to crash keystone,
    so the shield's path from a crash to an error is exercised this way.
    """
    from stacktrace_lab.record.asm import assembler

    layout = assembler._layout

    def with_crash(prepared, syntax):  # type: ignore[no-untyped-def]
        items = layout(prepared, syntax)
        at = next(i for i, it in enumerate(items) if it.statement.origin.line == line)
        return [
            *items[: at + 1],
            assembler._Item(items[at].statement, ".text", syntax),
            *items[at + 1 :],
        ]

    monkeypatch.setattr(assembler, "_layout", with_crash)


def test_a_keystone_crash_is_one_line_naming_the_line(
    write_scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_scenario("main:\n nop\n nop\n ret")
    toml_line = path.read_text().splitlines().index('source = """') + 3
    _crash_behind_the_front_end(monkeypatch, toml_line)
    with pytest.raises(BadInput) as info:
        build_program(load_scenario(path))
    assert str(info.value).startswith(f"{path}:{toml_line}: the assembler crashed: keystone")
    assert "SIGSEGV" in str(info.value) and "\n" not in str(info.value)


def test_a_keystone_crash_from_the_command_line_is_exit_2(write_scenario, tmp_path: Path) -> None:
    path = write_scenario("main:\n nop\n nop\n ret")
    script = textwrap.dedent(
        f"""
        import sys
        from stacktrace_lab.record.asm import assembler
        from stacktrace_lab.cli import main
        layout = assembler._layout
        def crash(prepared, syntax):
            items = layout(prepared, syntax)
            return [*items[:2], assembler._Item(items[1].statement, ".text", syntax), *items[2:]]
        assembler._layout = crash
        sys.exit(main(["record", {str(path)!r}, "-o", {str(tmp_path / "o.parquet")!r}]))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "the assembler crashed: keystone died of SIGSEGV" in lines[0]
    assert not (tmp_path / "o.parquet").exists()


# -- "Why": comments


def test_a_license_banner_and_comment_only_lines(record_source: Record) -> None:
    recording = record_source(
        """
        /*
         * Copyright (c) 2026 Someone. It's licensed (see LICENSE
         * #endif
         */
        main:
            /* a comment alone on a line */
            // another
            mov $1, %rax   /* trailing */ // and more
            ret            # the usual
        """
    )
    assert recording.metadata.stop.reason == "returned"
    assert _final(recording, "rax") == 1


# -- "Why": symbols and directives


def test_globl_keeps_the_address(record_source: Record) -> None:
    recording = record_source(
        """
            .globl main, target
            .hidden target
            .weak weak_one
            .local local_one
            .type target, @function
        main:
            nop
            movabs $target, %rax
            ret
        target:
            ret
            .size target, .-target
        """
    )
    symbols = recording.metadata.symbols
    assert symbols["target"] == CODE_BASE + 12
    assert _final(recording, "rax") == CODE_BASE + 12


def test_endbr64_and_plt_calls_run(record_source: Record) -> None:
    recording = record_source(
        """
        main:
            endbr64
            call helper@PLT
            ret
        helper:
            endbr64
            mov $7, %rax
            ret
        """
    )
    trace = load_trace(recording.path)
    texts = list(trace.rows(["insn"])["insn"].astype(str))
    assert texts[0] == "endbr64" and texts.count("endbr64") == 2
    assert _final(recording, "rax") == 7


def test_gotpcrel_loads_the_address(record_source: Record) -> None:
    recording = record_source(
        """
        main:
            movq target@GOTPCREL(%rip), %rax
            ret
        target:
            ret
        """
    )
    assert _final(recording, "rax") == recording.metadata.symbols["target"]


def test_if_0_code_is_not_assembled(tmp_path: Path) -> None:
    path = _files_scenario(
        tmp_path,
        {
            "prog.S": """
                main:
                    mov $1, %rax
                #if 0
                    mov $2, %rax
                #endif
                #ifdef EXTRA
                    add $EXTRA, %rax
                #endif
                #if defined(__x86_64__) && defined(__linux__) && defined(__ELF__)
                    add $10, %rax
                #else
                    add $100, %rax
                #endif
                    ret
            """
        },
        'defines = { EXTRA = "5" }',
    )
    recording = record(load_scenario(path), tmp_path / "t.parquet")
    assert _final(recording, "rax") == 16
    assert load_trace(recording.path).num_rows == 4


def test_a_cpp_directive_in_a_file_not_preprocessed_is_an_error(tmp_path: Path) -> None:
    # GNU as reads `#if 0` in a .s file as a comment and assembles what follows:
    # say so rather than run both branches.
    path = _files_scenario(tmp_path, {"prog.s": "main:\n#if 0\n nop\n#endif\n ret\n"})
    with pytest.raises(BadInput, match=r"prog\.s:2: .*only \.S files are preprocessed"):
        build_program(load_scenario(path))


def test_include_reads_the_file_next_to_it(tmp_path: Path) -> None:
    path = _files_scenario(
        tmp_path,
        {
            "defs.h": "#define ANSWER 42\n#define LOAD(reg) mov $ANSWER, reg\n",
            "prog.S": '#include "defs.h"\nmain:\n    LOAD(%rax)\n    ret\n',
        },
    )
    recording = record(load_scenario(path), tmp_path / "t.parquet")
    assert _final(recording, "rax") == 42


def test_a_missing_include_names_the_line(tmp_path: Path) -> None:
    path = _files_scenario(tmp_path, {"prog.S": 'main:\n#include "nope.h"\n ret\n'})
    with pytest.raises(BadInput) as info:
        build_program(load_scenario(path))
    assert str(info.value).startswith(f"{tmp_path / 'prog.S'}:2: cannot include")


# -- "Why": Intel


def test_intel_rbx_plus_two_constants_uses_their_sum(record_source: Record) -> None:
    recording = record_source(
        """
        .equ A, 8
        .equ B, 16
        main:
            lea rbx, [rip + table]
            mov rax, qword ptr [rbx + A + B]
            ret
        table:
            .quad 1, 2, 3, 4
        """,
        syntax="intel",
    )
    assert _final(recording, "rax") == 4  # [rbx + 24]; keystone alone reads [rbx + 16] = 3


def test_intel_rip_plus_a_local_label(record_source: Record) -> None:
    recording = record_source(
        """
        main:
            lea rdi, [rip + .Lmsg]
            mov rax, rdi
            ret
        .Lmsg:
            .ascii "hi"
        """,
        syntax="intel",
    )
    assert _final(recording, "rax") == CODE_BASE + 11  # lea (7) + mov (3) + ret (1)


def test_syntax_switches_inside_a_file(record_source: Record) -> None:
    recording = record_source(
        """
        main:
            mov $3, %rax
            .intel_syntax noprefix
            add rax, 4  ; a comment in Intel
            .att_syntax
            add $5, %rax
            ret
        """
    )
    assert _final(recording, "rax") == 12


def test_numeric_local_labels(record_source: Record) -> None:
    recording = record_source(
        """
        main:
            mov $3, %ecx
            xor %eax, %eax
        1:  add $2, %eax
            dec %ecx
            jnz 1b
            jmp 1f
            mov $99, %eax
        1:  ret
        """
    )
    assert _final(recording, "rax") == 6


# -- "Why": externals and stubs


def test_an_undefined_external_names_the_symbol_and_line(write_scenario) -> None:
    path = write_scenario("main:\n call _exit@PLT\n ret")
    with pytest.raises(BadInput, match=r":\d+: undefined symbol '_exit' .*stubs.*: call _exit@PLT"):
        build_program(load_scenario(path))


def test_stubs_give_externals_a_tiny_behaviour(write_scenario) -> None:
    path = write_scenario(
        "main:\n mov $3, %rdi\n call _exit@PLT\n call abort\n ret",
        extra="",
    )
    text = path.read_text().replace(
        "[program]", '[program]\nstubs = { _exit = "exit", abort = "halt" }'
    )
    path.write_text(text)
    recording = record(load_scenario(path), path.with_suffix(".parquet"))
    assert recording.metadata.stop.reason == "exit"
    assert "_exit" in recording.metadata.symbols


def test_a_stub_with_an_unknown_behaviour_is_refused(write_scenario) -> None:
    path = write_scenario("main:\n ret")
    path.write_text(path.read_text().replace("[program]", '[program]\nstubs = { f = "fly" }'))
    with pytest.raises(BadInput, match=r"field 'program\.stubs\.f': must be one of halt"):
        load_scenario(path)


# -- data sections


def test_data_sections_are_writable_and_their_labels_usable(record_source: Record) -> None:
    recording = record_source(
        """
            .text
        main:
            movl value(%rip), %eax
            addl $1, %eax
            movl %eax, value(%rip)
            movl value(%rip), %eax
            leaq message(%rip), %rsi
            movq buffer(%rip), %rdx
            ret
            .section .rodata
        message: .asciz "hi"
            .data
            .p2align 2
        value: .long 41
            .bss
        buffer: .zero 64
        """
    )
    assert _final(recording, "rax") == 42
    assert _final(recording, "rdx") == 0


# -- the miscompile guard


@pytest.mark.parametrize(
    ("line", "gnu_as"),
    [
        # keystone alone: rip + 0x20000000
        ("movq 0x20000000, %rax", "488b042500000020"),
        ("mov 0x20000000, %rbx", "488b1c2500000020"),
        # the stack protector's canary; keystone alone: fs:[rip + 0x28]
        ("movq %fs:0x28, %rax", "64488b042528000000"),
    ],
)
def test_absolute_operands_keystone_gets_wrong_are_repaired(
    write_scenario, line: str, gnu_as: str
) -> None:
    # The guard finds the wrong address; the line is assembled again with the
    # zero index register (`0x28(,%riz,1)`), which keystone encodes as GNU as does.
    program, _ = build_program(load_scenario(write_scenario(f"main:\n {line}\n ret")))
    assert program.code.hex() == gnu_as + "c3"


def test_a_repair_changes_only_the_lines_keystone_got_wrong(record_source: Record) -> None:
    recording = record_source(
        """
        main:
            movabs $heap_base, %rbx
            movq $5, (%rbx)
            movq heap_base, %rax      # keystone alone: rip + heap_base
            addq heap_base, %rax      # keystone: RIP-relative, reaching heap_base
            ret
        """,
        data=(("heap", 4096),),
    )
    assert _final(recording, "rax") == 10
    code = recording.metadata.code
    heap = recording.metadata.region("heap").base
    assert bytes.fromhex("488b0425") + heap.to_bytes(4, "little") in code  # the repaired load
    assert bytes.fromhex("480305") in code  # the add keeps keystone's RIP-relative form


def test_the_guard_accepts_absolute_operands_keystone_reaches_rip_relative(
    record_source: Record,
) -> None:
    # Keystone writes these RIP-relative, but reaching the right address.
    recording = record_source(
        """
        main:
            movabs $heap_base, %rbx
            movq $5, (%rbx)
            mov heap_base, %rax
            addq heap_base, %rax
            ret
        """,
        data=(("heap", 4096),),
    )
    assert _final(recording, "rax") == 10


def test_the_guard_compares_every_instruction_of_the_builtins_and_test_scenarios(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stacktrace_lab.record.asm import assembler
    from stacktrace_lab.record.asm.guard import Guard
    from stacktrace_lab.scenario import builtin_names

    guards: list[Guard] = []
    init = Guard.__init__

    def keep(self: Guard, symbols: dict[str, int]) -> None:
        init(self, symbols)
        guards.append(self)

    parsed = []
    check = assembler._check_statements

    def count(items, *args):  # type: ignore[no-untyped-def]
        parsed.append(sum(1 for i in items if i.statement and i.statement.instruction))
        return check(items, *args)

    monkeypatch.setattr(Guard, "__init__", keep)
    monkeypatch.setattr(assembler, "_check_statements", count)
    for name in [*builtin_names(), *sorted(Path(__file__).parent.glob("**/*.toml"))]:
        build_program(load_scenario(name))
    # Every instruction's operands compared (endbr64 is checked by name),
    # none skipped for implicit operands.
    assert sum(g.stats.checked for g in guards) == sum(parsed) > 1000
    assert sum(g.stats.unchecked for g in guards) == 0


def test_the_guard_catches_a_wrong_displacement(
    monkeypatch: pytest.MonkeyPatch, write_scenario
) -> None:
    # Keystone's [rbx + A + B] bug, reproduced by handing it the sum minus 8.
    from stacktrace_lab.record.asm import operands

    render = operands.Expr.render

    def off_by_8(self, constants, rename):  # type: ignore[no-untyped-def]
        text = render(self, constants, rename)
        return hex(int(text, 16) - 8) if text == "0x18" else text

    monkeypatch.setattr(operands.Expr, "render", off_by_8)
    path = write_scenario(
        ".equ A, 8\n.equ B, 16\nmain:\n mov rax, qword ptr [rbx + A + B]\n ret", syntax="intel"
    )
    with pytest.raises(
        BadInput, match=r"miscompile guard: .*expected displacement 0x18, assembled 0x10"
    ):
        build_program(load_scenario(path))


# -- errors stay one line


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("main:\n .macro m\n nop\n .endm\n ret", "unsupported directive .macro"),
        ("main:\n .section .init_array\n ret", "unsupported section '.init_array'"),
        ("main:\n .intel_syntax prefix\n ret", "only `.intel_syntax noprefix`"),
        # The size pre-check (limits.py) names these lines before the front end does.
        ("main:\n .p2align 20\n ret", "larger than the limit of 1048576 bytes"),
        ("main:\n .skip 0x7fffffffff\n ret", "larger than the limit of 1048576 bytes"),
        ("main:\n jmp 1b\n ret", "no local label 1b"),
        ("main:\n nop\nmain:\n ret", "label 'main' is defined twice"),
        ("main:\n %fs:\n ret", "unknown instruction"),  # keystone hangs on it
        ("main:\n ret\n/* never closed\n nop", "a /* comment that never ends: /* never closed"),
        ("main:\n .ascii hello\n ret", ".ascii takes strings in double quotes"),
    ],
)
def test_front_end_errors_name_the_line(write_scenario, capsys, source: str, message: str) -> None:
    path = write_scenario(source)
    assert main(["record", str(path), "-o", str(path.with_suffix(".parquet"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and f"{path}:" in err[0]


def test_data_directives_hold_the_values_their_lines_compute(record_source: Record) -> None:
    recording = record_source(
        """
            .equ N, 3
        main:
            movq table+8(%rip), %rax
            addq table+16(%rip), %rax
            ret
            .data
        table:
            .quad main, N * 4 + 1, end - table
            .byte 1, 2
            .word 0x1234
        end:
        """
    )
    assert _final(recording, "rax") == 13 + 28  # N * 4 + 1, then 3 quads + 2 bytes + a word


def test_the_guard_checks_data_bytes(monkeypatch: pytest.MonkeyPatch, write_scenario) -> None:
    # A data item keystone got wrong, reproduced by handing it a different number.
    from stacktrace_lab.record.asm import operands

    render = operands.Expr.render

    def off_by_one(self, constants, rename):  # type: ignore[no-untyped-def]
        text = render(self, constants, rename)
        return "0x2b" if text == "0x2a" else text

    monkeypatch.setattr(operands.Expr, "render", off_by_one)
    path = write_scenario("main:\n ret\n .data\nanswer: .long 6 * 7")
    with pytest.raises(BadInput, match=r"miscompile guard: item 1 is 0x2b, the line says 0x2a"):
        build_program(load_scenario(path))


def test_set_naming_a_label_or_the_location(record_source: Record) -> None:
    recording = record_source(
        """
        main:
            movabs $after_main, %rax
            movabs $here, %rbx
            ret
            .set after_main, main + 3
            .set here, .
        """
    )
    assert _final(recording, "rax") == CODE_BASE + 3
    assert _final(recording, "rbx") == CODE_BASE + 21


def test_intel_offset_is_the_address_and_a_bare_symbol_is_memory(record_source: Record) -> None:
    recording = record_source(
        """
        main:
            mov rax, offset value
            mov rbx, value
            ret
        value:
            .quad 0x1122334455667788
        """,
        syntax="intel",
    )
    trace = load_trace(recording.path)
    assert _final(recording, "rax") == CODE_BASE + 16  # 7 + 8 + 1 bytes of code
    assert _final(recording, "rbx") == 0x1122334455667788
    assert trace.num_rows == 3


def test_error_directive_and_section_stack(tmp_path: Path) -> None:
    path = _files_scenario(
        tmp_path,
        {
            "prog.S": """
                #ifndef __x86_64__
                #error "x86-64 only"
                #endif
                main:
                    leaq value(%rip), %rax
                    .pushsection .data
                value:  .quad 7
                    .popsection
                    movq (%rax), %rax
                    .section .rodata
                    .previous
                    ret
            """
        },
    )
    recording = record(load_scenario(path), tmp_path / "t.parquet")
    assert _final(recording, "rax") == 7
    (tmp_path / "prog.S").write_text('#error "not today"\nmain:\n ret\n')
    with pytest.raises(BadInput) as info:
        build_program(load_scenario(path))
    assert str(info.value).startswith(f'{tmp_path / "prog.S"}:1: #error "not today"')


def test_character_constants(record_source: Record) -> None:
    recording = record_source(
        """
        main:
            movb $'a', %al      # GNU as: 'a and 'a' are 97
            movb $'#', %bl      # a '#' inside a character is not a comment
            movb $'\\\\n, %cl     # an escape: the TOML string holds '\\n
            ret
        """
    )
    assert _final(recording, "rax") & 0xFF == 97
    assert _final(recording, "rbx") & 0xFF == ord("#")
    assert _final(recording, "rcx") & 0xFF == 10


def test_a_define_of_two_intel_statements_in_a_file_is_two_statements(tmp_path: Path) -> None:
    # GNU as: `;` separates statements in Intel syntax too. Read as a comment
    # (the inline-source rule), the second `add` would silently vanish.
    path = _files_scenario(
        tmp_path,
        {
            "prog.S": """
                .intel_syntax noprefix
                #define ADD_BOTH add rax, 1; add rax, 2
                main:
                    xor eax, eax
                    ADD_BOTH
                    ret
            """
        },
    )
    recording = record(load_scenario(path), tmp_path / "t.parquet")
    assert _final(recording, "rax") == 3


@pytest.mark.parametrize(
    ("program", "message"),
    [
        ("files = []", "field 'program.files': must be a non-empty array of file names"),
        ('files = ["nope.s"]', "field 'program.files': cannot read"),
        ('file = "a.s"\nfiles = ["a.s"]', "give exactly one of 'source', 'file' and 'files'"),
        ('file = "a.s"\ndefines = { 1x = "2" }', "field 'program.defines.1x': is not a valid name"),
        ('file = "a.s"\nstubs = { abort = 1 }', "field 'program.stubs.abort': must be one of"),
    ],
)
def test_program_fields_are_checked(tmp_path: Path, program: str, message: str) -> None:
    (tmp_path / "a.s").write_text("main:\n ret\n")
    path = tmp_path / "t.toml"
    path.write_text(f'name = "t"\n[[stacks]]\nname = "main"\nsize = 4096\n[program]\n{program}\n')
    with pytest.raises(BadInput) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


@pytest.mark.parametrize(
    ("behaviour", "stop"),
    [
        ("halt", "halted"),
        ("exit", "exit"),
        ("spin", "spin"),
        ("trap", "fault"),
        ("return", "returned"),
    ],
)
def test_each_stub_behaviour_stops_as_documented(write_scenario, behaviour: str, stop: str) -> None:
    path = write_scenario("main:\n call ext@PLT\n ret")
    path.write_text(
        path.read_text().replace("[program]", f'[program]\nstubs = {{ ext = "{behaviour}" }}')
    )
    recording = record(load_scenario(path), path.with_suffix(".parquet"))
    assert recording.metadata.stop.reason == stop


def test_strings_are_the_bytes_gnu_as_emits(tmp_path: Path) -> None:
    # UTF-8 text (keystone's binding refuses non-ASCII) and GNU as's escapes.
    path = _files_scenario(
        tmp_path,
        {"prog.s": 'main:\n ret\n .data\ntext:\n .ascii "café\\n"\n .asciz "\\x41\\101\\t\\""\n'},
    )
    program, _ = build_program(load_scenario(path))
    assert program.data.startswith("café\n".encode() + b'AA\t"\0')
