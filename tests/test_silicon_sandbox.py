"""The silicon check's native run never touches the host (silicon/sandbox.py),
and exit 0 needs stdout and stderr the same byte for byte.

Hostile programs: each does something a program someone sent you could do;
the check must not let it happen, and must still compare the runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from stacktrace_lab.arch import REGISTERS
from stacktrace_lab.cli import main
from stacktrace_lab.silicon import sandbox
from stacktrace_lab.silicon.check import silicon_check

silicon = pytest.mark.silicon
ENOSYS = (1 << 64) - 38


def _native_calls(result: object) -> dict[int, int]:
    """System call number -> what the native run was answered."""
    return {s.nr: s.result for s in result.native.syscalls}  # type: ignore[attr-defined]


@silicon
def test_a_program_that_unlinks_a_file_leaves_it(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    source = f"""
main:
    mov $87, %eax
    lea victim(%rip), %rdi
    syscall
    ret
victim:
    .asciz "{victim}"
"""
    result = silicon_check(str(write_scenario(source)))
    assert victim.read_text() == "still here"
    assert _native_calls(result) == {87: ENOSYS}  # answered as the recorder answers
    assert result.comparison.same, result.comparison.divergence


@silicon
@pytest.mark.parametrize("nr", [57, 58, 56], ids=["fork", "vfork", "clone"])
def test_a_program_that_forks_leaves_no_child(nr: int, write_scenario: Callable[..., Path]) -> None:
    # clone(SIGCHLD, 0): a fork. Natively nothing is started; the scenario's bare
    # machine answers -ENOSYS, and so does the check.
    source = f"main:\n    mov ${nr}, %eax\n    mov $17, %edi\n    xor %esi, %esi\n    syscall\n"
    source += "    ret\n"
    result = silicon_check(str(write_scenario(source)))
    assert _native_calls(result) == {nr: ENOSYS}
    assert result.comparison.same, result.comparison.divergence
    pgid = result.native.pid
    left = [
        p
        for p in os.listdir("/proc")
        if p.isdigit() and _pgid(p) == pgid  # the traced program's process group
    ]
    assert left == []


def _pgid(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])


@silicon
def test_a_program_that_reads_stdin_reads_nothing(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    source = """
main:
    sub $64, %rsp
    xor %eax, %eax
    xor %edi, %edi
    mov %rsp, %rsi
    mov $64, %edx
    syscall
    mov %rax, %rdx
    mov $1, %eax
    mov $1, %edi
    mov %rsp, %rsi
    syscall
    add $64, %rsp
    ret
"""
    path = write_scenario(source)
    secret = tmp_path / "stdin.txt"
    secret.write_bytes(b"secret from the caller's stdin\n")
    # The caller's own stdin holds data: the native program must not get it.
    saved = os.dup(0)
    try:
        with secret.open("rb") as stdin:
            os.dup2(stdin.fileno(), 0)
            result = silicon_check(str(path))
            assert os.lseek(0, 0, os.SEEK_CUR) == 0  # nothing consumed
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    assert _native_calls(result)[0] == 0  # read: end of file
    assert result.native.stdout == b""
    assert result.comparison.same, result.comparison.divergence


@silicon
def test_a_huge_write_loop_is_bounded(write_scenario: Callable[..., Path]) -> None:
    # 4,000 writes of 64 KiB: 256 MiB if nothing bounded it.
    source = """
main:
    mov $4000, %r12
again:
    mov $1, %eax
    mov $1, %edi
    mov %rsp, %rsi
    sub $65536, %rsi
    mov $65536, %edx
    syscall
    dec %r12
    jnz again
    ret
"""
    path = write_scenario(source, stacks=(("main", 1 << 17),))
    result = silicon_check(str(path))
    assert len(result.native.stdout) == sandbox.MAX_OUTPUT
    assert result.comparison.same, result.comparison.divergence


@silicon
def test_the_policy_runs_only_what_stays_in_the_process() -> None:
    pid = 4242
    assert sandbox.policy(12, (0,) * 6, pid) == sandbox.RUN  # brk
    assert sandbox.policy(9, (0, 4096, 3, 0x22, -1, 0), pid) == sandbox.RUN  # anonymous mmap
    assert sandbox.policy(9, (0, 4096, 1, 0x02, 3, 0), pid) == sandbox.ANSWER  # a file
    assert sandbox.policy(62, (1, 9, 0, 0, 0, 0), pid) == sandbox.ANSWER  # kill(1, SIGKILL)
    assert sandbox.policy(234, (pid, pid, 6, 0, 0, 0), pid) == sandbox.RUN  # abort()
    assert sandbox.policy(257, (0,) * 6, pid) == sandbox.ANSWER  # openat
    assert sandbox.policy(1, (1, 0, 0, 0, 0, 0), pid) == sandbox.ANSWER  # write: captured
    assert sandbox.policy(57, (0,) * 6, pid) == sandbox.STOP  # a program's fork
    assert sandbox.policy(57, (0,) * 6, pid, linux=False) == sandbox.ANSWER  # a scenario's


@silicon
def test_stdout_and_stderr_must_be_the_same_byte_for_byte(
    write_scenario: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    source = """
main:
    mov $1, %eax
    mov $2, %edi
    lea text(%rip), %rsi
    mov $5, %edx
    syscall
    ret
text:
    .ascii "hello"
"""
    path = write_scenario(source)
    result = silicon_check(str(path))
    assert result.comparison.same
    assert result.native.stderr == result.emulated.stderr == b"hello"
    # The emulator's stderr altered by one byte: every register agrees, and yet.
    result.emulated.stderr = b"hellO"
    from stacktrace_lab.silicon.compare import compare

    comparison = compare(
        result.native,
        result.emulated,
        name_address=result.target.name_address,
        source_line=result.target.source_line,
    )
    assert comparison.divergence is None and not comparison.same
    assert comparison.first_difference == "stderr"
    assert comparison.output_difference == ("stderr", 4, b"o", b"O")
    assert main(["silicon-check", str(path)]) == 0
    assert "agree on all 6 steps" in capsys.readouterr().out


@silicon
def test_a_trace_is_checked_against_its_own_rows(
    write_scenario: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stacktrace_lab.record.recorder import record
    from stacktrace_lab.scenario import load_scenario

    scenario = write_scenario(
        "main:\n    mov $5, %rbx\n    add %rbx, %rbx\n    mov %rbx, %rax\n    ret\n"
    )
    good = record(load_scenario(scenario), tmp_path / "good.parquet").path
    assert main(["silicon-check", str(good)]) == 0
    assert "agree on all 4 steps" in capsys.readouterr().out
    # One register of one row changed in the file: the check names that row.
    table = pq.read_table(good)
    rbx = table.column("rbx").to_pylist()
    rbx[2] ^= 1
    column = pa.array(rbx, type=table.schema.field("rbx").type)
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("rbx"), "rbx", column), bad)
    assert main(["silicon-check", str(bad), "--json"]) == 1
    out = capsys.readouterr().out
    assert '"step": 2' in out and '"rbx"' in out
    # The scenario changed since: the trace no longer says what ran.
    scenario.write_text(scenario.read_text().replace("$5", "$6"))
    assert main(["silicon-check", str(good)]) == 2
    assert "has changed since" in capsys.readouterr().err


@silicon
def test_a_wrong_memory_write_is_caught_at_its_step(
    write_scenario: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registers alone would agree: the value written is never read back."""
    import stacktrace_lab.silicon.check as check

    source = """
main:
    movabs $buf_base, %rbx
    movq $0x1122, 8(%rbx)
    pushq %rbx
    popq %rcx
    ret
"""
    path = write_scenario(source, data=(("buf", 4096),))
    result = silicon_check(str(path))
    assert result.comparison.same
    assert result.comparison.memory_difference is None
    real = check.emulate

    def wrong(*args: object) -> object:
        run = real(*args)  # type: ignore[arg-type]
        run.writes = run.writes.copy()
        first = int((run.writes[:, 0] >= 0).argmax())
        run.writes[first, 3] ^= 0x100  # the movq stored 0x1022
        return run

    monkeypatch.setattr(check, "emulate", wrong)
    comparison = silicon_check(str(path)).comparison
    assert not comparison.same and comparison.divergence is None
    assert comparison.first_difference == "memory"
    row, address, cpu, emulator = comparison.memory_difference  # type: ignore[misc]
    assert row == 1 and cpu[:2] == b"\x22\x11" and emulator[:2] == b"\x22\x10"
    rbx = REGISTERS.index("rbx")
    assert address == int(result.native.registers[1, rbx]) + 8


@silicon
@pytest.mark.parametrize("decoded", [True, False], ids=["one-pass", "second-pass"])
def test_memory_writes_are_read_in_the_stepping_pass_or_else_in_a_second_one(
    write_scenario: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, decoded: bool
) -> None:
    """The stepping pass reads where each instruction's memory operand and each
    push put their bytes; where it did not read (here: its decodes of where
    instructions write are taken away), a second pass reads there. Either way
    a wrong stored byte, a stack push's included, is caught, and an emulator
    write somewhere the instruction did not write is compared too."""
    import stacktrace_lab.silicon.check as check
    import stacktrace_lab.silicon.native as native

    source = """
main:
    movabs $buf_base, %rbx
    movups %xmm0, 16(%rbx)
    movq $0x1122, 8(%rbx)
    pushq %rbx
    popq %rcx
    ret
"""
    path = write_scenario(source, data=(("buf", 4096),))
    if not decoded:
        monkeypatch.setattr(native, "_write_plan", lambda insn, rip: ())
        monkeypatch.setattr(native, "_MAX_PUSHED", 0)
    passes: list[bool] = []
    real_run = check.run_native

    def counted(*args: object, **kwargs: object) -> object:
        passes.append(kwargs.get("replay") is not None)
        return real_run(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(check, "run_native", counted)
    result = silicon_check(str(path))
    assert result.comparison.same and result.comparison.memory_difference is None
    assert passes == ([False] if decoded else [False, True])
    rbx, rsp = REGISTERS.index("rbx"), REGISTERS.index("rsp")
    buf = int(result.native.registers[1, rbx])
    pushed_at = int(result.native.registers[4, rsp])
    if decoded:  # what the one pass read: the movups, the movq, the push
        assert [a for a, _ in result.native.memory[1]] == [buf + 16]
        assert result.native.memory[2] == [(buf + 8, b"\x22\x11" + bytes(6))]
        assert result.native.memory[3] == [(pushed_at, buf.to_bytes(8, "little"))]
    real = check.emulate

    def wrong(step: int, value_xor: int, address_delta: int) -> object:
        def emulate(*args: object) -> object:
            run = real(*args)  # type: ignore[arg-type]
            run.writes = run.writes.copy()
            first = int((run.writes[:, 0] == step).argmax())
            run.writes[first, 3] ^= value_xor
            run.writes[first, 1] += address_delta
            return run

        return emulate

    for step, value_xor, delta, address in (
        (2, 0x100, 0, buf + 8),  # the movq stored 0x1022
        (3, 0x1, 0, pushed_at),  # the push pushed rbx + 1
        (2, 0, 64, buf + 72),  # the movq stored its value 64 bytes too far
    ):
        passes.clear()
        monkeypatch.setattr(check, "emulate", wrong(step, value_xor, delta))
        comparison = silicon_check(str(path)).comparison
        assert comparison.first_difference == "memory", (step, value_xor, delta)
        row, at, _cpu, _emulator = comparison.memory_difference  # type: ignore[misc]
        assert (row, at) == (step, address)
        # a write where the instruction did not write is read by a second pass
        assert passes[-1] is (not decoded or delta != 0)
    if not decoded:
        return
    # A store the emulator left out (the movq's, the push's), though never read back.
    for step, address in ((2, buf + 8), (3, pushed_at)):

        def dropped(*args: object, step: int = step) -> object:
            run = real(*args)  # type: ignore[arg-type]
            run.writes = run.writes[run.writes[:, 0] != step]
            return run

        monkeypatch.setattr(check, "emulate", dropped)
        comparison = silicon_check(str(path)).comparison
        assert comparison.first_difference == "memory"
        row, at, cpu, emulator = comparison.memory_difference  # type: ignore[misc]
        assert (row, at, emulator) == (step, address, b"")
        assert cpu == (b"\x22\x11" + bytes(6) if step == 2 else buf.to_bytes(8, "little"))


@silicon
def test_the_run_to_from_goes_at_full_speed_and_stays_sandboxed(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    source = f"""
main:
    mov $87, %eax
    lea victim(%rip), %rdi
    syscall
    xor %eax, %eax
    xor %ecx, %ecx
    cpuid
    mov %ebx, %r12d
    call later
    ret
later:
    mov %r12, %rax
    ret
victim:
    .asciz "{victim}"
"""
    result = silicon_check(str(write_scenario(source)), from_symbol="later")
    assert victim.read_text() == "still here"  # the unlink before --from did not run
    assert result.comparison.same, result.comparison.divergence
    assert result.native.syscalls[0].nr == 87 and result.native.syscalls[0].result == ENOSYS
    # GenuineIntel's "Genu": the CPU model's cpuid, also before --from.
    assert int(result.native.registers[0, REGISTERS.index("r12")]) == 0x756E6547
    if result.native.skipped == -1:  # CPUID faulting here: a breakpoint, not single steps
        assert result.native.cpuid[0].step == -1


def _edited(trace: Path, out: Path, column: str, edit: Callable[[list[object]], None]) -> Path:
    """`trace` with one column's values changed by `edit`, as another tool would write it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(trace)
    values = table.column(column).to_pylist()
    edit(values)
    field = table.schema.field(column)
    index = table.schema.get_field_index(column)
    pq.write_table(table.set_column(index, field, pa.array(values, type=field.type)), out)
    return out


@silicon
def test_a_trace_is_checked_against_its_own_memory_writes_and_system_calls(
    write_scenario: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One byte of one recorded memory write changed in the file: caught at its row.
    A system call's argument changed in the file: caught at the call's row."""
    from stacktrace_lab.record.recorder import record
    from stacktrace_lab.scenario import load_scenario

    source = """
main:
    movabs $buf_base, %rbx
    movq $0x1122, 8(%rbx)
    mov $1, %edi
    lea msg(%rip), %rsi
    mov $3, %edx
    mov $1, %eax
    syscall
    ret
msg:
    .ascii "hi!"
"""
    scenario = write_scenario(source, data=(("buf", 4096),))
    good = record(load_scenario(scenario), tmp_path / "good.parquet").path
    assert main(["silicon-check", str(good)]) == 0
    capsys.readouterr()

    def one_byte(values: list[object]) -> None:
        access = values[1][0]  # type: ignore[index]
        access["data"] = bytes([access["data"][0] ^ 0xFF]) + access["data"][1:]

    bad = _edited(good, tmp_path / "bad-write.parquet", "writes", one_byte)
    assert main(["silicon-check", str(bad), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["first_difference"] == "memory"
    assert doc["memory_difference"]["step"] == 1
    assert doc["memory_difference"]["native"][:4] == "2211"
    assert doc["memory_difference"]["emulated"][:4] == "dd11"
    # The instruction that wrote it, and the first byte that differs.
    assert doc["memory_difference"]["instruction"].startswith("movq $0x1122")
    assert doc["memory_difference"]["first_byte"] == doc["memory_difference"]["address"]

    def other_length(values: list[object]) -> None:
        call = next(v for v in values if v is not None)
        call["args"][2] = 4  # type: ignore[index]

    bad = _edited(good, tmp_path / "bad-call.parquet", "syscall", other_length)
    assert main(["silicon-check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "the system call at step 6 is not the trace's" in out
    assert "write's argument 3: CPU 0x3, trace 0x4" in out


HOSTILE_FILES_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    int w = open("VICTIM", O_WRONLY | O_TRUNC);
    int w_errno = errno;
    int u = unlink("VICTIM");
    int u_errno = errno;
    int p = open("/etc/passwd", O_RDONLY);
    int p_errno = errno;
    char buf[16] = {0};
    int r = open("VICTIM", O_RDONLY);
    long n = read(r, buf, 10);
    printf("%d %d %d %d %d %d %d %ld %s\n", w, w_errno, u, u_errno, p, p_errno, r, n, buf);
    return 0;
}
"""


@silicon
def test_an_elf_sees_files_only_through_the_recorders_read_only_view(tmp_path: Path) -> None:
    """Natively, as when recorded: writing or unlinking a file is EACCES (nothing
    changes), /etc/passwd is not there, a file in the program's directory is
    read through the view; the runs agree."""
    import shutil
    import subprocess

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    source = tmp_path / "hostile.c"
    source.write_text(HOSTILE_FILES_C.replace("VICTIM", str(victim)))
    program = tmp_path / "hostile"
    subprocess.run(["gcc", "-static", "-o", str(program), str(source)], check=True)
    result = silicon_check(str(program), from_symbol="main")
    assert victim.read_text() == "still here"
    comparison = result.comparison
    assert comparison.same, (comparison.first_difference, comparison.divergence)
    assert result.native.stdout == b"-1 13 -1 13 -1 2 3 10 still here\n"
    # Answered by the view (EACCES, ENOENT, its descriptor 3), none run by the kernel.
    calls = [(s.name, s.result - (1 << 64) if s.result >> 63 else s.result)
             for s in result.native.syscalls]  # fmt: skip
    assert [result for name, result in calls if name == "openat"] == [-13, -2, 3]


SIGACTION_C = r"""
#include <signal.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &act, &old);
    printf("%d\n", old.sa_handler == SIG_DFL);
    return 0;
}
"""


@silicon
def test_a_trace_is_checked_against_what_the_kernel_wrote_for_the_calls_that_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rt_sigaction runs natively: its old action (SIG_DFL, as the recorder's
    process starts; the tool's own ignored SIGPIPE is not inherited) is compared
    with the bytes the trace says the recorder's kernel wrote at that row."""
    import shutil
    import subprocess

    from stacktrace_lab.record.linux.elf_front import record_elf

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    (tmp_path / "sigaction.c").write_text(SIGACTION_C)
    program = tmp_path / "sigaction"
    subprocess.run(["gcc", "-static", "-o", str(program), "sigaction.c"], check=True, cwd=tmp_path)
    good = record_elf(program, tmp_path / "good.parquet", from_symbol="main").path
    result = silicon_check(str(good))
    assert result.comparison.same, (
        result.comparison.first_difference,
        result.comparison.divergence,
    )
    assert result.native.stdout == b"1\n"
    row = next(s.step for s in result.native.syscalls if s.name == "rt_sigaction")

    def wrong_old_action(values: list[object]) -> None:
        access = values[row][0]  # type: ignore[index]
        access["data"] = b"\x01" + access["data"][1:]  # the old handler: SIG_IGN

    bad = _edited(good, tmp_path / "bad.parquet", "writes", wrong_old_action)
    assert main(["silicon-check", str(bad), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["first_difference"] == "memory"
    assert doc["memory_difference"]["step"] == row
    assert "rt_sigaction" in doc["memory_difference"]["instruction"]
