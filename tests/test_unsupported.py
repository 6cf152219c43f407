"""What one emulated process cannot run faithfully stops the run, saying what (never silently).

A thread that fails to start (clone answered -ENOSYS) used to end in a trace
saying `exit(0)`, with half the program's output; now the run stops with
reason `unsupported` at the `syscall` that asked for it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stacktrace_lab.analysis.check import check
from stacktrace_lab.examples import compiler_missing
from stacktrace_lab.record.elf_front import record_elf
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
        ("thread", THREAD_C, "threads: clone3 with CLONE_THREAD"),
        ("fork", FORK_C, "clone: a new process"),
    ],
)
def test_a_second_thread_or_process_stops_the_run_at_its_syscall(
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
