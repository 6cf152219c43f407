"""The silicon check: the same program single-stepped on this CPU and in the emulator.

Tests marked `silicon` run natively under ptrace; conftest skips them, saying
why, where that is not possible. The rest test the comparison on hand-made rows.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stacktrace_lab.arch import REGISTERS
from stacktrace_lab.cli import main
from stacktrace_lab.record.machine.cpu import XCR0, CpuModel
from stacktrace_lab.scenario import builtin_names
from stacktrace_lab.silicon import ptrace
from stacktrace_lab.silicon.check import silicon_check
from stacktrace_lab.silicon.compare import compare
from stacktrace_lab.silicon.instructions import InstructionTable
from stacktrace_lab.silicon.normalise import (
    drop_rep_extra_steps,
    normalise,
    undefined_flag_masks,
)

silicon = pytest.mark.silicon
RBX = REGISTERS.index("rbx")
RCX = REGISTERS.index("rcx")


def _check(target: str | Path, **kwargs: object):  # type: ignore[no-untyped-def]
    return silicon_check(str(target), **kwargs).comparison  # type: ignore[arg-type]


@silicon
@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_scenario_runs_the_same_on_this_cpu(name: str) -> None:
    comparison = _check(name)
    assert comparison.divergence is None, comparison.divergence
    assert comparison.native_steps == comparison.emulated_steps == comparison.compared_steps
    assert comparison.native_steps > 10
    assert comparison.stdout_same
    assert comparison.native_stop.split(":")[0] == comparison.emulated_stop.split(":")[0]


@silicon
def test_native_stops_are_the_recorders(write_scenario: Callable[..., Path]) -> None:
    """Each stop reason has its native equivalent, at the same step."""
    programs = {
        "returned": "main:\n mov $7, %rax\n ret",
        "halted": "main:\n mov $1, %rax\n hlt",
        "exit": "main:\n mov $60, %eax\n mov $3, %edi\n syscall",
        "spin": "main:\n mov $1, %rax\nmain_loop:\n jmp main_loop",
        "fault": "main:\n movabs $0x12345000, %rax\n movq $1, (%rax)",
    }
    for reason, source in programs.items():
        comparison = _check(write_scenario(source))
        assert comparison.same, (reason, comparison.divergence)
        assert comparison.native_stop.startswith(reason), comparison.native_stop
        assert comparison.emulated_stop.startswith(reason), comparison.emulated_stop


@silicon
def test_rep_string_steps_are_counted_as_the_cpu_does(write_scenario: Callable[..., Path]) -> None:
    path = write_scenario(
        """
        main:
            mov $3, %ecx
            lea -64(%rsp), %rdi
            rep stosb
            mov $5, %ecx
            lea -64(%rsp), %rsi
            lea -128(%rsp), %rdi
            rep movsb
            ret
        """
    )
    comparison = _check(path)
    assert comparison.same, comparison.divergence
    # 2 + 3 iterations + 3 + 5 iterations + ret: no extra step per rep.
    assert comparison.native_steps == comparison.emulated_steps == 14
    assert comparison.normalisations["rep-extra-step"] == 0


@silicon
def test_undefined_flags_are_masked_until_defined(write_scenario: Callable[..., Path]) -> None:
    path = write_scenario(
        """
        main:
            mov $0x7f, %rax
            mov $3, %rcx
            imul $0x40, %rcx, %rdx
            shr $1, %rax
            and %rcx, %rax
            mul %rcx
            bsf %rax, %rbx
            add $1, %rbx
            ret
        """
    )
    comparison = _check(path)
    assert comparison.same, comparison.divergence


CPUID_PROGRAM = """
main:
    mov $0, %eax
    mov $0, %ecx
    cpuid
    mov %ebx, %r12d
    ret
"""


@silicon
def test_cpuid_natively_is_the_recorders_cpu_model(write_scenario: Callable[..., Path]) -> None:
    """cpuid is not run natively: the stepper answers it from record/machine/cpu.py, so the
    runs agree even without replay, and the program takes the recorder's path."""
    path = write_scenario(CPUID_PROGRAM)
    result = silicon_check(str(path))
    assert result.comparison.same
    assert [(c.leaf, c.ebx) for c in result.native.cpuid] == [(0, CpuModel.cpuid(0, 0)[1])]
    assert _check(path, replay=False).same


@silicon
def test_a_wrong_cpuid_answer_is_caught_at_the_step_after_it(
    write_scenario: Callable[..., Path],
) -> None:
    path = write_scenario(CPUID_PROGRAM)
    result = silicon_check(str(path))
    rows = result.emulated.registers.copy()
    rows[3:, RBX] ^= 1  # the emulator's cpuid gave another vendor word
    result.emulated.registers = rows
    divergence = _compare_again(result).divergence
    assert divergence is not None
    assert divergence.step == 3  # the row after cpuid (step 2) shows its result
    assert divergence.previous_instruction == "cpuid"
    assert divergence.cause == "cpuid"
    assert divergence.symbol == "main+12"
    assert divergence.instruction == "movl %ebx, %r12d"
    file, line = str(divergence.source).split(":")
    assert file == path.name
    assert path.read_text().splitlines()[int(line) - 1].strip() == "mov %ebx, %r12d"


XGETBV_PROGRAM = """
main:
    xor %ecx, %ecx
    xgetbv
    mov %eax, %r12d
    ret
"""


@silicon
def test_xgetbv_natively_is_the_recorders_cpu_model(
    write_scenario: Callable[..., Path],
) -> None:
    path = write_scenario(XGETBV_PROGRAM)
    result = silicon_check(str(path))
    assert result.comparison.same
    assert [x.eax for x in result.native.xgetbv] == [XCR0]
    assert int(result.native.registers[2, REGISTERS.index("rax")]) == XCR0
    assert _check(path, replay=False).same


VALUES_PROGRAM = """
main:
    rdtsc
    mov %eax, %r12d
    rdtscp
    mov %ecx, %r13d
    rdrand %rbx
    rdseed %r14d
    setc %al
    ret
"""


@silicon
def test_timestamps_and_random_numbers_are_replayed_and_caught_without_replay(
    write_scenario: Callable[..., Path],
) -> None:
    """rdtsc, rdtscp, rdrand and rdseed give the CPU's own values natively and the
    CPU model's fixed ones in the emulator: replayed in order, the runs are the same;
    without replay the first difference is named at the row after rdtsc."""
    if not {"rdrand", "rdseed"} <= set(Path("/proc/cpuinfo").read_text().split()):
        pytest.skip("this CPU has no rdrand/rdseed")
    path = write_scenario(VALUES_PROGRAM)
    result = silicon_check(str(path))
    assert result.comparison.same, result.comparison.divergence
    assert [v.mnemonic for v in result.native.values] == ["rdtsc", "rdtscp", "rdrand", "rdseed"]
    divergence = _check(path, replay=False).divergence
    assert divergence is not None
    assert (divergence.step, divergence.cause) == (1, "timing")
    assert divergence.previous_instruction == "rdtsc"


@silicon
def test_one_flipped_register_is_caught_at_its_step_with_its_cause() -> None:
    """A deliberately wrong emulation: rbx flipped at one row of green-threads."""
    result = silicon_check("green-threads")
    emulated = result.emulated
    rows = emulated.registers.copy()
    table = InstructionTable(result.native.code)
    # A row whose previous instruction does not write rbx: the change has no writer.
    step = next(i for i in range(1000, len(rows)) if "rbx" not in table.writes(int(rows[i - 1, 0])))
    rows[step, RBX] ^= 1 << 40
    emulated.registers = rows
    comparison = _compare_again(result, emulated)
    divergence = comparison.divergence
    assert divergence is not None
    assert divergence.step == step
    assert list(divergence.registers) == ["rbx"]
    native, wrong = divergence.registers["rbx"]
    assert native ^ wrong == 1 << 40
    assert divergence.cause == "unwritten-register"
    assert comparison.compared_steps == step


@silicon
def test_a_wrong_result_of_an_instruction_is_named_as_that_instruction() -> None:
    result = silicon_check("first-switch")
    emulated = result.emulated
    rows = emulated.registers.copy()
    rows[6:, REGISTERS.index("rcx")] += 8  # `movabs $hello, %rcx` (step 5) gave another value
    emulated.registers = rows
    comparison = _compare_again(result, emulated)
    divergence = comparison.divergence
    assert divergence is not None
    assert (divergence.step, divergence.cause) == (6, "instruction")
    assert str(divergence.previous_instruction).startswith("movabsq $0x4000")
    assert list(divergence.registers) == ["rcx"]


@silicon
def test_cli_exit_status_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["silicon-check", "first-switch"]) == 0
    assert "agree on all 19 steps" in capsys.readouterr().out
    assert main(["silicon-check", "green-threads", "--from", "worker", "--to", "yield"]) == 0
    assert "agree on all" in capsys.readouterr().out


@silicon
def test_cli_reports_the_divergence_and_exits_1(
    write_scenario: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_scenario("main:\n    rdtsc\n    mov %eax, %r12d\n    ret\n")
    assert main(["silicon-check", str(path), "--no-replay"]) == 1
    out = capsys.readouterr().out
    assert "differs at step 1" in out
    assert "most likely: timing (timing)" in out
    assert main(["silicon-check", str(path), "--no-replay", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["same"] is False
    assert doc["first_difference"] == "registers"
    assert doc["divergence"]["step"] == 1
    assert doc["divergence"]["cause"] == "timing"
    assert doc["divergence"]["previous_instruction"] == "rdtsc"
    assert set(doc["divergence"]["registers"]) >= {"rax"}


def test_ptrace_refused_is_exit_2_saying_how_to_allow_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = "ptrace(PTRACE_TRACEME) refused by the kernel; " + ptrace.how_to_allow()
    monkeypatch.setattr("stacktrace_lab.silicon.check.unavailable_reason", lambda: refused)
    assert main(["silicon-check", "first-switch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--cap-add=SYS_PTRACE" in err and "ptrace_scope" in err


def test_bad_targets_are_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if ptrace.unavailable_reason() is not None:
        pytest.skip("the target is only looked at once ptrace is known to work")
    assert main(["silicon-check", "no-such-scenario"]) == 2
    assert main(["silicon-check", "first-switch", "--from", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert "no-such-scenario" in err and "nowhere" in err
    # A --from label the run never reaches: it spins first, and says so.
    assert main(["silicon-check", "first-switch", "--from", "main", "--to", "hello"]) == 0
    capsys.readouterr()
    assert main(["silicon-check", "first-switch-wrong-slot", "--from", "hello"]) == 2
    assert "never reached --from hello" in capsys.readouterr().err
    dynamic = Path("/bin/true").resolve()
    if dynamic.read_bytes()[:4] == b"\x7fELF":  # dynamically linked: compared too
        assert main(["silicon-check", str(dynamic)]) == 0
        assert "agree on all" in capsys.readouterr().out


def _compare_again(result, emulated=None):  # type: ignore[no-untyped-def]
    """Compare the check's native run again, with `emulated` (the check's own emulated
    run, edited by the test, unless given), named as the check names places."""
    return compare(
        result.native,
        result.emulated if emulated is None else emulated,
        name_address=result.target.name_address,
        source_line=result.target.source_line,
    )


def _code(*instructions: bytes) -> tuple[dict[int, bytes], np.ndarray]:
    code, rips, addr = {}, [], 0x400000
    for insn in instructions:
        code[addr] = insn
        rips.append(addr)
        addr += len(insn)
    return code, np.array(rips, dtype=np.uint64)


def test_undefined_flags_stay_masked_until_an_instruction_defines_them() -> None:
    shr, nop, add, imul = b"\x48\xd1\xe8", b"\x90", b"\x48\x01\xd8", b"\x48\x0f\xaf\xc1"
    code, rips = _code(shr, nop, add, nop, imul, nop)
    masks = undefined_flag_masks(InstructionTable(code).row_facts(rips))
    af, sf, zf, pf = 1 << 4, 1 << 7, 1 << 6, 1 << 2
    assert masks[0] == 0  # nothing ran before the first row
    assert masks[1] & af and masks[2] & af  # shr left AF undefined, nop keeps it so
    assert masks[3] == 0  # add defines every status flag again
    assert masks[5] & (sf | zf | af | pf) == sf | zf | af | pf  # imul: SDM says undefined


def test_rep_extra_step_rows_are_dropped() -> None:
    code, rips = _code(b"\xf3\xaa", b"\xc3")  # rep stosb; ret
    rows = np.zeros((5, len(REGISTERS)), dtype=np.uint64)
    rows[:, 0] = [rips[0]] * 4 + [rips[1]]
    rows[:, RCX] = [3, 2, 1, 0, 0]  # unicorn's extra step: the rep again with rcx == 0
    keep = drop_rep_extra_steps(rows, InstructionTable(code))
    assert keep.tolist() == [0, 1, 2, 4]


@silicon
def test_a_run_cut_at_max_steps_compares_up_to_there() -> None:
    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "call-heavy.toml"
    comparison = _check(bench, max_steps=3000)
    assert comparison.same, comparison.divergence
    assert comparison.native_steps == comparison.compared_steps == 3000


@silicon
def test_the_native_process_starts_with_fixed_random_bytes_and_no_vdso(tmp_path: Path) -> None:
    from stacktrace_lab.silicon.check import scenario_target
    from stacktrace_lab.silicon.native import FIXED_AT_RANDOM, run_native

    target = scenario_target("first-switch", tmp_path)
    native = run_native(target.executable, start=target.entry)
    stack = native.initial_stack
    rsp = native.initial_registers["rsp"]
    words = [int.from_bytes(stack[i : i + 8], "little") for i in range(0, len(stack) - 7, 8)]
    argc = words[0]
    cursor = argc + 2
    while words[cursor]:  # envp
        cursor += 1
    auxv = {}
    cursor += 1
    while words[cursor]:
        auxv.setdefault(words[cursor], words[cursor + 1])
        cursor += 2
    random_at = auxv[25] - rsp  # AT_RANDOM
    assert stack[random_at : random_at + 16] == FIXED_AT_RANDOM
    assert 33 not in auxv  # AT_SYSINFO_EHDR: no vDSO for the program to find
    again = run_native(target.executable, start=target.entry)
    assert again.initial_stack == stack  # ASLR off: the same bytes at the same place


# Real programs: the examples of the real-binaries issue, built at test time
# with the builds that issue defines (stacktrace_lab/examples.py).


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("examples")


@silicon
@pytest.mark.parametrize("build", ["c-static", "rust-static-pie", "rust-static"])
def test_the_examples_run_the_same_on_this_cpu(examples: Path, build: str) -> None:
    from stacktrace_lab.examples import build_example, compiler_missing

    why = compiler_missing(build)
    if why is not None:
        pytest.skip(why)
    program = build_example(build, examples)
    result = silicon_check(str(program))
    comparison = result.comparison
    assert comparison.same, comparison.divergence
    assert comparison.stdout_same
    assert result.native.stdout == b"I LOVE WAKING UP ON A NEW STACK!\n"
    assert comparison.native_stop.startswith("spin")
    assert comparison.compared_steps == comparison.native_steps > 10_000
    # cpuid answered from the recorder's model natively: no OSXSAVE, so no xgetbv.
    assert result.native.cpuid and not result.native.xgetbv
    if build == "c-static":  # its trace, recorded whole, against the file's rows and writes
        from stacktrace_lab.record.linux.elf_front import record_elf

        trace = record_elf(program, examples / "c-static.parquet").path
        from_file = silicon_check(str(trace)).comparison
        assert from_file.same, (from_file.first_difference, from_file.divergence)
        assert from_file.compared_steps > 10_000
    if build == "c-static":  # a wrong emulation inside main is named down to its C line
        from_main = silicon_check(str(program), from_symbol="main")
        rows = from_main.emulated.registers.copy()
        rows[3:, RBX] ^= 4
        from_main.emulated.registers = rows
        divergence = compare(
            from_main.native,
            from_main.emulated,
            name_address=from_main.target.name_address,
            source_line=from_main.target.source_line,
        ).divergence
        assert divergence is not None
        assert (divergence.step, divergence.cause) == (3, "unwritten-register")
        assert divergence.symbol.startswith("main+")
        assert str(divergence.source).startswith("first_switch.c:")
    if build == "rust-static":  # a scenario file naming the program: its from/to, its args
        scenario = examples / "rust-static.toml"
        scenario.write_text(
            f'name = "rs"\n[program]\nelf = "{program.name}"\nargs = ["a", "b"]\n'
            'from = "main"\nto = "first_switch::hello"\n'
        )
        from_scenario = silicon_check(str(scenario))
        assert from_scenario.comparison.same, from_scenario.comparison.divergence
        assert from_scenario.comparison.native_stop.startswith("to")
        assert from_scenario.native.initial_stack[:8] == (3).to_bytes(8, "little")  # argc
    if build == "rust-static-pie":  # --from a symbol moves with the program
        main_only = silicon_check(str(program), from_symbol="main").comparison
        assert main_only.same, main_only.divergence
        assert 0 < main_only.compared_steps < comparison.compared_steps


_GAP_SETUP = "main:\n    movabs $buf_base, %rbx\n    movl $5, 16(%rbx)\n"


@silicon
@pytest.mark.parametrize(
    "instruction",
    ["movaps 16(%rbx), %xmm0", "addps 16(%rbx), %xmm0", "pcmpeqb 16(%rbx), %xmm0"],
)
def test_aligned_16_byte_operands_run_the_same_on_this_cpu(
    instruction: str, write_scenario: Callable[..., Path]
) -> None:
    source = _GAP_SETUP + f"    {instruction}\n    movq %xmm0, %rax\n    ret\n"
    comparison = _check(write_scenario(source, data=(("buf", 4096),)))
    assert comparison.same, comparison.divergence
    assert comparison.native_stop.startswith("returned")


@silicon
@pytest.mark.parametrize("instruction", ["movaps 8(%rbx), %xmm0", "pcmpeqb 8(%rbx), %xmm0"])
def test_a_misaligned_operand_faults_at_the_same_step_on_this_cpu(
    instruction: str, write_scenario: Callable[..., Path]
) -> None:
    source = _GAP_SETUP + f"    {instruction}\n    ret\n"
    comparison = _check(write_scenario(source, data=(("buf", 4096),)))
    assert comparison.same, comparison.divergence
    assert comparison.native_stop.startswith("fault: SIGSEGV")
    assert comparison.emulated_stop.startswith("fault: general protection fault (#GP)")
    assert comparison.native_steps == comparison.emulated_steps == 3


@silicon
@pytest.mark.parametrize("instruction", ["vpaddd %xmm1, %xmm0, %xmm2", "fldz\n    fsin"])
def test_instructions_the_emulator_gets_wrong_are_reported(
    instruction: str, write_scenario: Callable[..., Path]
) -> None:
    comparison = _check(
        write_scenario(_GAP_SETUP + f"    {instruction}\n    ret\n", data=(("buf", 4096),))
    )
    assert not comparison.same
    assert comparison.divergence is not None
    assert comparison.divergence.cause == "unsupported-instruction"
    assert comparison.emulated_stop.startswith("unsupported")


# --- every mask: a wrong *defined* flag is still caught -----------------------------

_CF, _OF_BIT, _AF = 1 << 0, 1 << 11, 1 << 4
_BSF = b"\x48\x0f\xbc\xc3"  # bsf %rbx, %rax: leaves CF OF SF AF PF undefined


@pytest.mark.parametrize(
    ("code", "defined"),
    [
        (bytes.fromhex("660f3a63c100"), _CF | _OF_BIT),  # pcmpistri: CF, OF defined
        (bytes.fromhex("48d1d0"), _CF | _OF_BIT),  # rcl $1: OF defined for a count of 1
        (bytes.fromhex("48d1c8"), _CF | _OF_BIT),  # ror $1
        (bytes.fromhex("48d1e0"), _CF | _OF_BIT),  # shl $1: OF defined
    ],
)
def test_a_flag_the_instruction_defines_is_never_masked(code: bytes, defined: int) -> None:
    # After bsf every one of those flags is undefined; the instruction defines them
    # again, so on the row after it a flipped flag must show (mask clear).
    table_code, rips = _code(_BSF, code, b"\x90")
    masks = undefined_flag_masks(InstructionTable(table_code).row_facts(rips))
    assert masks[1] & defined == defined  # before it: bsf's undefined flags masked
    assert masks[2] & defined == 0  # after it: defined, compared


@pytest.mark.parametrize(
    "code",
    [bytes.fromhex("48c1e003"), bytes.fromhex("48d3e0"), bytes.fromhex("48c1d003")],
    ids=["shl $3", "shl %cl", "rcl $3"],
)
def test_of_after_a_shift_or_rotate_by_more_than_one_is_undefined(code: bytes) -> None:
    table_code, rips = _code(code, b"\x90")
    masks = undefined_flag_masks(InstructionTable(table_code).row_facts(rips))
    assert masks[1] & _OF_BIT


@silicon
def test_a_wrong_flag_after_pcmpistri_is_caught(write_scenario: Callable[..., Path]) -> None:
    source = """
main:
    movabs $buf_base, %rbx
    movl $0x41424344, (%rbx)
    movdqu (%rbx), %xmm0
    movdqu 16(%rbx), %xmm1
    bsf %rbx, %rax
    pcmpistri $0, %xmm1, %xmm0
    nop
    ret
"""
    result = silicon_check(str(write_scenario(source, data=(("buf", 4096),))))
    assert result.comparison.same, result.comparison.divergence
    for flag in (_CF, _OF_BIT):
        emulated = result.emulated
        rows = result.emulated.registers.copy()
        rows[6:, REGISTERS.index("rflags")] ^= flag  # pcmpistri is step 5
        wrong = dataclasses.replace(emulated, registers=rows)
        divergence = _compare_again(result, wrong).divergence
        assert divergence is not None
        assert (divergence.step, divergence.cause) == (6, "flags")
        assert divergence.previous_instruction == "pcmpistri $0, %xmm1, %xmm0"


def test_undefined_flags_saved_in_r11_by_a_syscall_are_masked_the_defined_ones_not() -> None:
    code, rips = _code(_BSF, b"\x0f\x05", b"\x90", b"\x90")  # bsf; syscall; nop; nop
    native = np.zeros((4, len(REGISTERS)), dtype=np.uint64)
    native[:, 0] = rips
    native[2:, REGISTERS.index("r11")] = 0x246
    table = InstructionTable(code)
    for flipped, caught in ((_CF, False), (_OF_BIT, False), (1 << 6, True)):  # ZF: defined
        emulated = native.copy()
        emulated[2:, REGISTERS.index("r11")] ^= flipped
        result = normalise(native, emulated, table)
        assert (result.native != result.emulated).any() == caught, hex(flipped)


@silicon
def test_pushf_pushes_no_trap_flag_and_a_wrong_pushed_flag_is_caught(
    write_scenario: Callable[..., Path],
) -> None:
    source = """
main:
    movq $-1, %rax
    addq $1, %rax
    pushfq
    popq %rcx
    ret
"""
    result = silicon_check(str(write_scenario(source)))
    assert result.comparison.same, result.comparison.divergence
    rcx = REGISTERS.index("rcx")
    assert int(result.native.registers[4, rcx]) & 0x100 == 0  # the popped word
    rows = result.emulated.registers.copy()
    rows[4:, rcx] |= 0x100  # the emulator pushing TF (or any wrong flag) is caught
    wrong = dataclasses.replace(result.emulated, registers=rows)
    divergence = _compare_again(result, wrong).divergence
    assert divergence is not None and divergence.step == 4
    assert list(divergence.registers) == ["rcx"]


@silicon
def test_fxsave_runs_and_its_mxcsr_mask_is_compared(write_scenario: Callable[..., Path]) -> None:
    """An aligned fxsave runs in both; its 512-byte image is compared byte for
    byte. unicorn stores MXCSR_MASK 0xffff; a CPU stores its own (0x2ffff on
    CPUs with bit 17): a CPU-model value the check reports, at offset 28."""
    source = _GAP_SETUP + "    fxsave (%rbx)\n    ret\n"
    result = silicon_check(str(write_scenario(source, data=(("buf", 4096),))))
    comparison = result.comparison
    assert comparison.divergence is None
    assert comparison.native_stop.startswith("returned")
    if comparison.memory_difference is not None:
        row, address, cpu, emulator = comparison.memory_difference
        buf = int(result.native.registers[2, RBX])
        assert (row, comparison.first_difference) == (2, "memory")
        assert buf <= address < buf + 512
        assert emulator[28 - (address - buf) :][:4] == b"\xff\xff\x00\x00"  # MXCSR_MASK
        assert cpu != emulator


@pytest.mark.parametrize(
    ("reason", "native", "emulated", "same"),
    [
        ("exit", "exit_group(3)", "exit_group(3)", True),
        ("exit", "exit_group(3)", "exit_group(4)", False),
        ("fault", "SIGFPE at 0x400003 (address 0x400003)", "divide error (#DE) at 0x400003", True),
        ("fault", "SIGSEGV at 0x400003 (address 0x0)", "divide error (#DE) at 0x400003", False),
        ("fault", "SIGILL at 0x400003 (address 0x400003)", "invalid instruction at 0x400003", True),
        ("fault", "SIGSEGV: fetch from 0x12345000", "fetch from unmapped memory: 1 bytes", True),
    ],
)
def test_the_end_is_the_same_exit_status_or_fault_kind(
    reason: str, native: str, emulated: str, same: bool
) -> None:
    from stacktrace_lab.silicon.compare import same_end_detail

    assert same_end_detail(reason, native, emulated) is same


@silicon
def test_a_division_by_zero_faults_the_same_way(write_scenario: Callable[..., Path]) -> None:
    comparison = _check(
        write_scenario("main:\n    xor %ecx, %ecx\n    mov $1, %eax\n    div %ecx\n")
    )
    assert comparison.same, comparison.divergence
    assert comparison.native_stop.startswith("fault: SIGFPE")
    assert comparison.emulated_stop.startswith("fault: divide error")


@silicon
def test_a_rep_stos_that_runs_off_its_page_faults_at_the_same_iteration(
    write_scenario: Callable[..., Path],
) -> None:
    # buf is one page with nothing mapped after it (guard pages stay unmapped):
    # the 5th byte stored lands past its end.
    source = """
main:
    movabs $buf_base, %rdi
    add $4092, %rdi
    mov $16, %ecx
    mov $0xab, %al
    rep stosb
    ret
"""
    comparison = _check(write_scenario(source, data=(("buf", 4096),)))
    assert comparison.same, comparison.divergence
    assert comparison.native_stop.startswith("fault: SIGSEGV")
    assert comparison.native_steps == comparison.emulated_steps == 4 + 5  # 4 stored, 5th faults


@silicon
def test_a_syscall_after_undefined_flags_agrees(write_scenario: Callable[..., Path]) -> None:
    source = """
main:
    mov $0x10, %rbx
    bsf %rbx, %rax
    mov $39, %eax
    syscall
    mov %r11, %rdx
    pushfq
    popq %rcx
    ret
"""
    comparison = _check(write_scenario(source))
    assert comparison.same, comparison.divergence


def test_the_resume_flag_is_masked_and_nothing_else() -> None:
    code, rips = _code(b"\xf3\xaa", b"\xc3")  # rep stosb; ret
    native = np.zeros((3, len(REGISTERS)), dtype=np.uint64)
    native[:, 0] = [rips[0], rips[0], rips[1]]
    native[:, REGISTERS.index("rcx")] = [2, 1, 0]
    native[1, REGISTERS.index("rflags")] = 0x10202  # RF, mid-rep
    emulated = native.copy()
    emulated[1, REGISTERS.index("rflags")] = 0x202
    table = InstructionTable(code)
    result = normalise(native, emulated, table)
    assert (result.native == result.emulated).all()
    assert result.rows_touched["resume-flag"] == 1
    emulated[1, REGISTERS.index("rflags")] = 0x203  # and a wrong CF beside it
    result = normalise(native, emulated, table)
    assert not (result.native == result.emulated).all()


START_UP_VALUES = """
main:
    rdtsc
    mov %eax, %r12d
    rdtscp
    mov %eax, %r13d
    {random}
after_start_up:
    mov %r12, %rax
    add %r13, %rax
    ret
"""


@silicon
@pytest.mark.parametrize("random", ["nop", "rdrand %r14"])
def test_values_before_from_come_from_the_cpu_model_and_are_logged(
    write_scenario: Callable[..., Path], random: str
) -> None:
    """rdtsc, rdtscp (and rdrand) before --from: natively (at full speed, rdtsc
    faulting; or single-stepped) and emulated (fast-forwarded) they get the CPU
    model's values, logged, and the runs from --from on are the same."""
    from stacktrace_lab.record.machine.cpu import RANDOM_VALUE, TSC_START, TSC_STEP

    if random != "nop" and "rdrand" not in Path("/proc/cpuinfo").read_text().split():
        pytest.skip("this CPU has no rdrand")
    path = write_scenario(START_UP_VALUES.format(random=random))
    result = silicon_check(str(path), from_symbol="after_start_up")
    assert result.comparison.same, result.comparison.divergence
    first = result.native.registers[0]
    assert int(first[REGISTERS.index("r12")]) == TSC_START & 0xFFFFFFFF
    assert int(first[REGISTERS.index("r13")]) == (TSC_START + TSC_STEP) & 0xFFFFFFFF
    logged = [(v.mnemonic, v.step < 0) for v in result.native.values]
    assert logged[:2] == [("rdtsc", True), ("rdtscp", True)]
    if random != "nop":
        assert logged[2] == ("rdrand", True)
        assert int(first[REGISTERS.index("r14")]) == RANDOM_VALUE
    assert result.emulated.steps == result.native.steps + 1 or result.comparison.same


@silicon
def test_a_dynamically_linked_program_compares_as_a_static_one(
    examples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The c-dynamic example (gcc -g, the host's ld.so and libc): natively its
    loader sees the libraries only through the recorder's file view; whole, from
    main, and as a trace recorded from main, it checks clean. Output that differs
    is caught."""
    from stacktrace_lab.examples import build_example, compiler_missing
    from stacktrace_lab.record.linux.elf_front import record_elf

    why = compiler_missing("c-dynamic")
    if why is not None:
        pytest.skip(why)
    program = build_example("c-dynamic", examples)
    whole = silicon_check(str(program))
    assert whole.comparison.same, (whole.comparison.divergence, whole.comparison.first_difference)
    assert whole.native.stdout == b"I LOVE WAKING UP ON A NEW STACK!\n"
    assert whole.native.interp_base  # the loader ran first, natively too
    assert whole.comparison.compared_steps > 50_000  # the loader, libc's start-up, main
    opened = [s for s in whole.native.syscalls if s.name == "openat"]
    assert opened and all(s.result < 1 << 63 for s in opened[-1:])  # libc.so.6 was found
    from_main = silicon_check(str(program), from_symbol="main")
    assert from_main.comparison.same, from_main.comparison.divergence
    trace = record_elf(program, tmp_path / "dynamic.parquet", from_symbol="main").path
    assert main(["silicon-check", str(trace)]) == 0

    import stacktrace_lab.silicon.check as check

    real = check.emulate

    def other_output(*args: object) -> object:
        run = real(*args)  # type: ignore[arg-type]
        run.stdout = run.stdout.replace(b"NEW", b"OLD")
        return run

    monkeypatch.setattr(check, "emulate", other_output)
    differs = silicon_check(str(program), from_symbol="main").comparison
    assert not differs.same
    assert differs.first_difference == "stdout"
    assert differs.output_difference is not None
    assert differs.output_difference[2].startswith(b"NEW")


@silicon
def test_library_code_is_named_by_the_libraries_the_run_loaded(
    examples: Path, tmp_path: Path
) -> None:
    """A difference inside libc is named as the trace's own `symbol` column names
    that row (`_IO_puts+N`, not an address), in the program's check and the
    trace's alike, with libc's source line where its debug file is installed."""
    import pyarrow.parquet as pq

    from stacktrace_lab.examples import build_example, compiler_missing
    from stacktrace_lab.record.linux.elf_front import record_elf

    why = compiler_missing("c-dynamic")
    if why is not None:
        pytest.skip(why)
    program = build_example("c-dynamic", examples)
    trace = record_elf(program, tmp_path / "dynamic.parquet", from_symbol="main").path
    named = pq.read_table(trace, columns=["symbol"]).column("symbol").to_pylist()
    in_puts = next(i for i, n in enumerate(named) if "puts+" in n and not n.endswith("+0"))
    for target in (str(trace), str(program)):
        result = silicon_check(target, from_symbol=None if target == str(trace) else "main")
        assert result.comparison.same, result.comparison.divergence
        rows = result.emulated.registers.copy()
        rows[in_puts:, RBX] ^= 4
        result.emulated.registers = rows
        divergence = _compare_again(result).divergence
        assert divergence is not None and divergence.step == in_puts
        assert divergence.symbol == named[in_puts], target
        source = divergence.source
        assert source is None or not source.startswith("first_switch.c"), source


THREADED_C = r"""
#include <pthread.h>
#include <stdio.h>
static void *work(void *arg) { return arg; }
int main(void) {
    pthread_t t;
    pthread_create(&t, 0, work, 0);
    pthread_join(t, 0);
    puts("joined");
    return 0;
}
"""


@silicon
@pytest.mark.parametrize("link", [("-static",), ()], ids=["static", "dynamic"])
def test_a_threaded_program_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], link: tuple[str, ...]
) -> None:
    import shutil
    import subprocess

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    source = tmp_path / "threaded.c"
    source.write_text(THREADED_C)
    program = tmp_path / "threaded"
    subprocess.run(["gcc", *link, "-pthread", "-o", str(program), str(source)], check=True)
    for extra in ([], ["--from", "main"]):
        assert main(["silicon-check", str(program), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "threads are not compared yet" in err


@silicon
def test_a_trace_of_several_threads_is_refused_in_one_line(
    write_scenario: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trace whose `thread` column holds two threads: refused, before anything runs
    (the trace of a real threaded program is refused in tests/test_threads.py)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stacktrace_lab.record.recorder import record
    from stacktrace_lab.scenario import load_scenario

    scenario = write_scenario("main:\n    mov $5, %rbx\n    add %rbx, %rbx\n    ret\n")
    good = record(load_scenario(scenario), tmp_path / "one.parquet").path
    assert main(["silicon-check", str(good)]) == 0
    capsys.readouterr()
    table = pq.read_table(good)
    assert set(table.column("thread").to_pylist()) == {1}
    threads = pa.array([1] * (table.num_rows - 1) + [2], pa.uint16())
    two = tmp_path / "two-threads.parquet"
    column = table.schema.get_field_index("thread")
    pq.write_table(table.set_column(column, "thread", threads), two)
    assert main(["silicon-check", str(two)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "threads are not compared yet" in err


def _instruction(text: str, defined: int = 0, undefined: int = 0, outside: str | None = None):  # type: ignore[no-untyped-def]
    from stacktrace_lab.silicon.instructions import Instruction

    return Instruction(text, undefined, defined, outside, rep_string=False)


_EMULATED = dataclasses.make_dataclass("_Emulated", [("stop_reason", str), ("stop_detail", str)])
_CF, _OF, _TF, _AF = 0x1, 0x800, 0x100, 0x10


@pytest.mark.parametrize(
    ("previous", "writes", "registers", "call", "cause", "category"),
    [
        # The instruction's architected result: a register it writes, a flag it defines.
        (_instruction("addq %rbx, %rax", _CF | _OF), {"rax", "rflags"}, {"rax": (1, 2)},
         None, "instruction", "emulator bug"),
        (_instruction("addq %rbx, %rax", _CF | _OF), {"rax", "rflags"}, {"rflags": (_CF, 0)},
         None, "flags", "emulator bug"),
        # Bits it leaves undefined, a flag it does not touch, a register it does not write.
        (_instruction("shrq $3, %rax", _CF, _AF | _OF), {"rax", "rflags"},
         {"rflags": (_AF, 0)}, None, "undefined-flags", "not architected"),
        (_instruction("addq %rbx, %rax", _CF | _OF), {"rax", "rflags"}, {"rflags": (_TF, 0)},
         None, "unwritten-register", "outside the instruction"),
        (_instruction("addq %rbx, %rax", _CF), {"rax", "rflags"}, {"rcx": (1, 2)},
         None, "unwritten-register", "outside the instruction"),
        # popf writes TF and DF too: a difference there is its own.
        (_instruction("popfq", _CF), {"rsp", "rflags"}, {"rflags": (_TF, 0)},
         None, "flags", "emulator bug"),
        # The time, randomness, the CPU model, the host's kernel: never the emulator's bug.
        (_instruction("rdtsc", outside="rdtsc"), {"rax", "rdx"}, {"rax": (1, 2)},
         None, "timing", "timing"),
        (_instruction("rdrand %rbx", outside="rdrand"), {"rbx", "rflags"}, {"rbx": (1, 2)},
         None, "randomness", "randomness"),
        (_instruction("cpuid", outside="cpuid"), {"rax", "rbx"}, {"rbx": (1, 2)},
         None, "cpuid", "cpu model"),
        (_instruction("xgetbv", outside="xgetbv"), {"rax", "rdx"}, {"rax": (7, 3)},
         None, "xgetbv", "cpu model"),
        (_instruction("syscall", outside="syscall"), {"rax", "rcx", "r11"}, {"rax": (1, 2)},
         "clock_gettime", "timing", "timing"),
        (_instruction("syscall", outside="syscall"), {"rax", "rcx", "r11"}, {"rax": (8, 9)},
         "getrandom", "randomness", "randomness"),
        (_instruction("syscall", outside="syscall"), {"rax", "rcx", "r11"}, {"rax": (1, 2)},
         "getpid", "syscall-result", "host"),
    ],
)  # fmt: skip
def test_each_cause_is_named_by_what_differs_and_after_what(  # type: ignore[no-untyped-def]
    previous, writes, registers, call, cause, category
) -> None:
    """Only the instruction's own architected result is an emulator bug."""
    from stacktrace_lab.silicon.compare import CAUSES, _cause

    emulated = _EMULATED("exit", "exit_group(0)")
    found = _cause(5, registers, previous, frozenset(writes), emulated, True, True, call)
    assert (found, CAUSES[found][0]) == (cause, category)


@silicon
@pytest.mark.parametrize(
    ("program", "cause"),
    [
        ("main:\n    rdtsc\n    mov %eax, %r12d\n    ret\n", "timing"),
        ("main:\n    rdrand %rbx\n    mov %rbx, %r12\n    ret\n", "randomness"),
        ("main:\n    mov $39, %eax\n    syscall\n    mov %rax, %r12\n    ret\n", "syscall-result"),
    ],
    ids=["rdtsc", "rdrand", "getpid"],
)
def test_without_replay_the_outside_world_is_named_not_blamed_on_the_emulator(
    write_scenario: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    program: str,
    cause: str,
) -> None:
    """The CPU's own time, random numbers and kernel answers (--no-replay): the
    difference is named for what it is, in the text and the JSON, with the
    instruction and the first differing register."""
    if cause == "randomness" and "rdrand" not in Path("/proc/cpuinfo").read_text().split():
        pytest.skip("this CPU has no rdrand")
    path = write_scenario(program)
    assert main(["silicon-check", str(path), "--no-replay", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)["divergence"]
    assert doc["cause"] == cause and doc["category"] != "emulator bug"
    assert doc["previous_instruction"].split()[0] in ("rdtsc", "rdrand", "syscall", "rdrandq")
    assert doc["first_register"] in ("rax", "rbx", "rdx")
    assert main(["silicon-check", str(path), "--no-replay"]) == 1
    out = capsys.readouterr().out
    assert f"most likely: {cause} (" in out and "first:" in out


PRINTF_DOUBLES_C = r"""
#include <stdio.h>
int main(int argc, char **argv) {
    volatile double x = 0.5 + argc;
    printf("%f %.17g %e\n", x / 3.0, x * 3.25, x / 7.0);
    return 0;
}
"""

LIBM_SIN_C = r"""
#include <math.h>
#include <stdio.h>
int main(int argc, char **argv) {
    volatile double x = 0.5 + argc;
    printf("%f %.17g\n", sin(x), cos(x) / 7.0);
    return 0;
}
"""

X87_FSIN_C = r"""
#include <stdio.h>
int main(void) {
    double x = 1e10, y;
    __asm__ volatile ("fldl %1\n\tfsin\n\tfstpl %0" : "=m"(y) : "m"(x));
    printf("%.17g\n", y);
    return 0;
}
"""


def _gcc_static(tmp_path: Path, name: str, source: str) -> Path:
    import shutil
    import subprocess

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    (tmp_path / f"{name}.c").write_text(source)
    program = tmp_path / name
    command = ["gcc", "-static", "-O0", "-g", "-o", str(program), f"{name}.c", "-lm"]
    subprocess.run(command, check=True, cwd=tmp_path)
    return program


@silicon
@pytest.mark.parametrize("from_symbol", [None, "main"])
def test_c_printf_of_doubles_runs_the_same_on_this_cpu(
    tmp_path: Path, from_symbol: str | None
) -> None:
    """printf %f, %g, %e of SSE2 arithmetic (gcc -static): the same stdout, and
    the same registers and memory writes at every step."""
    program = _gcc_static(tmp_path, "printf_doubles", PRINTF_DOUBLES_C)
    result = silicon_check(str(program), from_symbol=from_symbol)
    comparison = result.comparison
    assert comparison.same, (comparison.first_difference, comparison.divergence)
    assert result.native.stdout == b"0.500000 4.875 2.142857e-01\n"
    assert comparison.compared_steps > 5000


@silicon
def test_c_libm_sin_prints_the_same_and_the_mxcsr_flags_unicorn_never_sets_are_named(
    tmp_path: Path,
) -> None:
    """libm's sin and cos (glibc's SSE2 code): the same stdout. Their first
    instruction saves MXCSR (stmxcsr), whose sticky inexact flag (PE, 0x20) the
    CPU has set by then and unicorn never sets: the check reports that write as
    the first difference, and what follows from it as such, not as a bug of the
    instruction that read it back."""
    program = _gcc_static(tmp_path, "libm_sin", LIBM_SIN_C)
    result = silicon_check(str(program), from_symbol="main")
    comparison = result.comparison
    assert comparison.stdout_same
    assert result.native.stdout.startswith(b"0.997495 0.0101053")
    if comparison.same:  # an emulator that sets MXCSR's exception flags
        return
    assert comparison.first_difference == "memory"
    _row, _address, cpu, emulator = comparison.memory_difference  # type: ignore[misc]
    assert int.from_bytes(cpu[:4], "little") ^ int.from_bytes(emulator[:4], "little") == 0x20
    assert str(comparison.memory_instruction).startswith("stmxcsr")
    divergence = comparison.divergence
    assert divergence is None or divergence.cause == "memory-input"


@silicon
def test_c_x87_fsin_is_reported_as_a_difference(tmp_path: Path) -> None:
    """x87 fsin: unicorn computes it differently from the CPU; never "the same"."""
    program = _gcc_static(tmp_path, "fsin", X87_FSIN_C)
    comparison = silicon_check(str(program), from_symbol="main").comparison
    assert not comparison.same
    assert comparison.divergence is not None or comparison.output_difference is not None
    if comparison.divergence is not None:
        assert comparison.divergence.cause == "unsupported-instruction"
        assert comparison.divergence.previous_instruction == "fsin"


_HEAP_AND_GLOBALS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static char greeting[32];
int main(void) {
    char *heap = malloc(100000);  /* the break moves */
    strcpy(greeting, "static-pie");
    strcpy(heap, greeting);
    printf("%s at its place\n", heap);
    return 3;
}
"""


@silicon
@pytest.mark.parametrize("from_symbol", [None, "main"])
def test_a_static_pie_trace_runs_natively_at_the_recorders_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], from_symbol: str | None
) -> None:
    """Linux loads a static-pie under the vDSO, the recorder at PIE_BASE: the native
    run of its trace is moved to the recording's addresses before its first
    instruction, its break kept where the recorder keeps it, and compared row by
    row; a changed row of the file is still caught."""
    import shutil
    import subprocess

    import pyarrow as pa
    import pyarrow.parquet as pq

    from stacktrace_lab.cli import main
    from stacktrace_lab.record.linux.elf import PIE_BASE
    from stacktrace_lab.record.linux.elf_front import record_elf

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    (tmp_path / "pie.c").write_text(_HEAP_AND_GLOBALS)
    command = ["gcc", "-static-pie", "-O0", "-g", "-o", "pie", "pie.c"]
    subprocess.run(command, check=True, cwd=tmp_path)
    trace = record_elf(tmp_path / "pie", tmp_path / "pie.parquet", from_symbol=from_symbol).path
    result = silicon_check(str(trace))
    comparison = result.comparison
    assert comparison.same, (comparison.first_difference, comparison.divergence)
    assert comparison.compared_steps > (100 if from_symbol else 10_000)
    assert result.native.stdout == b"static-pie at its place\n"
    assert comparison.native_stop == "exit: exit_group(3)"
    rip = int(result.native.registers[0, REGISTERS.index("rip")])
    assert PIE_BASE <= rip < PIE_BASE + 0x1000000  # the recorder's addresses, not the kernel's
    # The break where the recorder's kernel keeps it (before --from too), not the kernel's.
    brks = [s.result for s in result.native.syscalls if s.name == "brk"]
    assert len(set(brks)) >= 2 and all(PIE_BASE < b < PIE_BASE + (1 << 30) for b in brks)
    # One register of one row changed in the file: that row.
    table = pq.read_table(trace)
    rbx = table.column("rbx").to_pylist()
    rbx[50] ^= 1
    column = pa.array(rbx, type=table.schema.field("rbx").type)
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("rbx"), "rbx", column), bad)
    capsys.readouterr()
    assert main(["silicon-check", str(bad), "--json"]) == 1
    assert '"step": 50' in capsys.readouterr().out
