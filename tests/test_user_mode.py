"""A user-mode CPU (issue 16): privileged instructions stop the run with #GP before they run."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from stacktrace_lab.examples import compiler_missing
from stacktrace_lab.record.core.hooks import PURE_PYTHON_ENV, native_core
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.record.machine.cpu import RANDOM_VALUE, TSC_START, TSC_STEP
from stacktrace_lab.record.machine.initial_state import RFLAGS
from stacktrace_lab.record.machine.user_mode import privileged_instructions
from stacktrace_lab.record.recorder import Recording
from stacktrace_lab.replay import replay
from stacktrace_lab.trace import load_trace

PRIVILEGED = {
    "cli": "cli",
    "sti": "sti",
    "wrmsr": "wrmsr",
    "rdmsr": "rdmsr",
    "in %dx, %al": "inb %dx, %al",
    "out %al, %dx": "outb %al, %dx",
    "inb $0x60, %al": "inb $0x60, %al",
    "outsb": "outsb (%rsi), %dx",
    "lgdt (%rax)": "lgdtq (%rax)",
    "lidt (%rax)": "lidtq (%rax)",
    "mov %rax, %cr0": "movq %rax, %cr0",
    "mov %cr3, %rax": "movq %cr3, %rax",
    "mov %rax, %dr7": "movq %rax, %dr7",
    "invlpg (%rax)": "invlpg (%rax)",
    "wbinvd": "wbinvd",
    "swapgs": "swapgs",
    "clts": "clts",
}


@pytest.mark.parametrize("instruction", list(PRIVILEGED))
def test_the_fault_names_each_instruction(
    instruction: str, record_source: Callable[..., Recording]
) -> None:
    recording = record_source(f"main:\n    movq $1, %rbx\n    {instruction}\n    ret\n")
    stop, meta = recording.metadata.stop, recording.metadata
    assert (stop.reason, stop.step, meta.steps) == ("fault", 1, 2)
    assert stop.detail == (
        f"general protection fault (#GP) at 0x400007: {PRIVILEGED[instruction]} "
        "is a privileged instruction and the program runs in user mode"
    )
    # It did not execute: rbx was set by the step before, nothing after ran.
    assert meta.final["rip"] == 0x400007 and meta.final["rbx"] == 1
    assert replay(load_trace(recording.path)).matches


def test_sti_does_not_change_the_flags(record_source: Callable[..., Recording]) -> None:
    # A user-mode `sti` faults before it runs: rflags stays as Linux started the
    # process (IF already set, record/machine/initial_state.py), not anything sti made it.
    recording = record_source("main:\n    sti\n    ret\n")
    assert recording.metadata.stop.reason == "fault"
    assert recording.metadata.final["rflags"] == RFLAGS


@pytest.mark.parametrize(
    "source, reason",
    [
        ("main:\n    hlt\n", "halted"),  # the documented way for a scenario to stop
        ("main:\n    str %ax\n    ret\n", "returned"),  # not privileged without UMIP
        ("main:\n    pushfq\n    popfq\n    ret\n", "returned"),
    ],
)
def test_user_mode_instructions_still_run(
    source: str, reason: str, record_source: Callable[..., Recording]
) -> None:
    assert record_source(source).metadata.stop.reason == reason


def test_a_privileged_instruction_hidden_as_bytes_or_inside_another_is_found() -> None:
    # `.byte 0xfa` is cli; `movabs $0x...fa..., %rax` holds 0xfa at offset 2, where a
    # jump into the middle of the instruction would run it.
    assert privileged_instructions(bytes([0x90, 0xFA]), 0x400000) == {0x400001: "cli"}
    movabs = bytes([0x48, 0xB8, 0xFA] + [0x90] * 7)
    assert privileged_instructions(movabs, 0x400000) == {0x400002: "cli"}
    assert privileged_instructions(bytes([0x66, 0xEF]), 0) == {
        0: "outw %ax, %dx",
        1: "outl %eax, %dx",
    }


# Code written at run time: an RWX mapping that holds rdtsc, then nop, then cli.
JIT_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
static const unsigned char RDTSC_RET[] = {  /* rdtsc; shl $32, %rdx; or %rdx, %rax; ret */
    0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0xc3};
static const unsigned char NOP_RET[] = {0x90, 0xc3};
static const unsigned char CLI_RET[] = {0xfa, 0xc3};
int main(void) {
    unsigned char *code = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memcpy(code, RDTSC_RET, sizeof RDTSC_RET);
    uint64_t a = ((uint64_t (*)(void))code)();
    uint64_t b = ((uint64_t (*)(void))code)();
    printf("%llu %llu\n", (unsigned long long)a, (unsigned long long)b);
    fflush(stdout);
    memcpy(code, NOP_RET, sizeof NOP_RET);
    ((void (*)(void))code)();
    memcpy(code, CLI_RET, sizeof CLI_RET);  /* the same address, now privileged */
    ((void (*)(void))code)();
    puts("never");
    return 0;
}
"""


@pytest.fixture(params=["c-core", "pure-python"])
def hooks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both implementations of the per-step hooks (record/core/hooks.py)."""
    if request.param == "pure-python":
        monkeypatch.setenv(PURE_PYTHON_ENV, "1")
    else:
        monkeypatch.delenv(PURE_PYTHON_ENV, raising=False)
        if native_core() is None:
            pytest.skip("the C recording core is not built here")
    return str(request.param)


def _build_static_c(directory: Path, name: str, source: str) -> Path:
    why = compiler_missing("c-static")
    if why is not None:
        pytest.skip(f"cannot build a C program: {why}")
    (directory / f"{name}.c").write_text(source)
    program = directory / name
    subprocess.run(
        ["gcc", "-static", "-O1", "-o", str(program), str(directory / f"{name}.c")], check=True
    )
    return program


def test_jit_code_gets_fixed_values_and_a_jit_cli_faults(tmp_path: Path, hooks: str) -> None:
    program = _build_static_c(tmp_path, "jit", JIT_C)
    one = record_elf(program, tmp_path / "one.parquet")
    meta = one.metadata
    # rdtsc written at run time is answered by the CPU model, not the host's clock.
    first, second = (int(word) for word in meta.stdout.split())
    assert first >= TSC_START and second - first == TSC_STEP
    # The page was rewritten twice: nop ran, then cli at the same address faulted.
    assert meta.stop.reason == "fault", meta.stop
    assert "cli is a privileged instruction and the program runs in user mode" in (meta.stop.detail)
    assert "never" not in meta.stdout
    two = record_elf(program, tmp_path / "two.parquet")
    assert one.path.read_bytes() == two.path.read_bytes()


def test_back_to_back_fixed_value_instructions_get_the_cpu_models_answers(
    record_source: Callable[..., Recording], hooks: str
) -> None:
    """rdrand right after rdtscp, rdseed right after rdrand: each answer lands at the next row."""
    recording = record_source(
        "main:\n    rdtsc\n    rdtscp\n    rdrand %rbx\n    rdseed %r14d\n    nop\n    ret\n"
    )
    rows = load_trace(recording.path).rows()
    assert list(rows["rax"][1:3]) == [TSC_START, TSC_START + TSC_STEP]
    assert rows["rbx"][3] == RANDOM_VALUE
    assert rows["r14"][4] == RANDOM_VALUE & 0xFFFFFFFF
    assert rows["rflags"][4] & 1 == 1  # CF: a value was delivered


SELF_MODIFYING_C = r"""
#include <stdint.h>
#include <sys/mman.h>

__attribute__((noipa, aligned(4096))) int value(void) { return 1; }

int main(void) {
    uintptr_t page = (uintptr_t)value & ~(uintptr_t)4095;
    mprotect((void *)page, 4096, PROT_READ | PROT_WRITE | PROT_EXEC);
    unsigned char *code = (unsigned char *)value;  /* b8 01 00 00 00: mov $1, %eax */
    code[1] = 42;
    return value();
}
"""


def test_rows_show_the_bytes_that_ran_after_the_program_rewrote_its_code(
    hooks: str, tmp_path: Path
) -> None:
    """The program rewrites `mov $1, %eax` into `mov $42, %eax` and exits 42: the row
    says `movl $0x2a, %eax` with the new bytes, not the file's (issue 26 item 3), and
    replay, which re-runs the same machine, agrees."""
    program = _build_static_c(tmp_path, "smc", SELF_MODIFYING_C)
    out = tmp_path / f"{hooks}.parquet"
    meta = record_elf(program, out).metadata
    assert meta.stop.detail == "exit_group(42)"
    trace = load_trace(out)
    rows = trace.table(["insn", "insn_bytes", "symbol"]).to_pylist()
    (first,) = [r for r in rows if r["symbol"] == "value+0"]
    assert first["insn"] == "movl $0x2a, %eax"
    assert first["insn_bytes"] == bytes.fromhex("b82a000000")
    assert replay(trace).difference is None
