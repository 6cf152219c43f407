"""What one emulated process cannot run faithfully stops the run, saying what (never silently).

A second process (fork, clone without CLONE_THREAD) or another program
(execve) stops the run with reason `unsupported` at the `syscall` that asked
for it. Threads used to stop it too; they run now (record/machine/threads.py,
tests/test_threads.py), and this file checks that they no longer stop it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stacktrace_lab.analysis.check import check
from stacktrace_lab.examples import compiler_missing
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.trace import load_trace

THREAD_C = r"""
#include <pthread.h>
#include <stdio.h>
static void *body(void *arg) { puts("t"); return arg; }
int main(void) {
    pthread_t t;
    pthread_create(&t, 0, body, 0);
    pthread_join(t, 0);
    puts("m");
    return 0;
}
"""

EXEC_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    char *argv[] = {"/bin/true", 0};
    execv("/bin/true", argv);
    puts("exec failed");
    return 1;
}
"""

FORK_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    if (fork() == 0) return 3;
    puts("parent");
    return 0;
}
"""


def _build(tmp_path: Path, name: str, source: str) -> Path:
    why = compiler_missing("c-static")
    if why is not None:
        pytest.skip(f"cannot build a C program: {why}")
    (tmp_path / f"{name}.c").write_text(source)
    program = tmp_path / name
    subprocess.run(
        ["gcc", "-static", "-O1", "-o", program, tmp_path / f"{name}.c", "-lpthread"], check=True
    )
    return program


@pytest.mark.parametrize(
    ("name", "source", "detail"),
    [
        ("fork", FORK_C, "clone: a new process"),
        ("exec", EXEC_C, "execve: another program"),
    ],
)
def test_a_second_process_or_program_stops_the_run_at_its_syscall(
    tmp_path: Path, name: str, source: str, detail: str
) -> None:
    program = _build(tmp_path, name, source)
    meta = record_elf(program, tmp_path / f"{name}.parquet").metadata
    assert meta.stop.reason == "unsupported"
    assert meta.stop.detail.startswith(detail)
    trace = load_trace(tmp_path / f"{name}.parquet")
    last = trace.syscalls()[-1]
    assert last.step == meta.stop.step and last.result is None  # the call never returned
    assert meta.stdout == ""  # nothing printed as if the program had gone on
    # `check` says so: an unsupported stop fails `stop` unless the scenario expects it.
    stop = next(r for r in check(trace).results if r.id == "stop")
    assert not stop.holds


def test_a_thread_no_longer_stops_the_run(tmp_path: Path) -> None:
    program = _build(tmp_path, "thread", THREAD_C)
    meta = record_elf(program, tmp_path / "thread.parquet").metadata
    assert (meta.stop.reason, meta.stop.detail) == ("exit", "exit_group(0)")
    assert meta.stdout == "t\nm\n"
    stop = next(r for r in check(load_trace(tmp_path / "thread.parquet")).results if r.id == "stop")
    assert stop.holds
