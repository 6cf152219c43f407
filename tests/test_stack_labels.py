"""Stacks labelled by the function that first ran on them (record/linux/discovery.py).

A stack with no allocation behind it (an mmap'd stack, a static array, a range rsp
visited) is labelled `stack of <function>`: the first function entered at its first
instruction by the switch's `ret` or `jmp` after rsp jumped to the stack. The
discovery pass keeps the rip (and rsp) of the steps after each switch, in the C
core and in the pure-Python walk alike (the traces are byte-identical).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stacktrace_lab.examples import compiler_missing
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.trace import load_trace
from tests.test_native_core import both_ways

#: A glibc ucontext coroutine on an mmap'd stack (resumed twice) and one on a
#: static array; main's swaps go to each in turn.
MAPPED_AND_ARRAY_C = r"""
#include <stdio.h>
#include <sys/mman.h>
#include <ucontext.h>
static ucontext_t main_ctx, co_ctx, arr_ctx;
static char array_stack[16384] __attribute__((aligned(16)));
static void worker(void) {
    for (int i = 0; i < 2; i++) { puts("w"); swapcontext(&co_ctx, &main_ctx); }
}
static void on_array(void) { puts("a"); swapcontext(&arr_ctx, &main_ctx); }
int main(void) {
    size_t size = 64 * 1024;
    char *stack = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (stack == MAP_FAILED) return 1;
    getcontext(&co_ctx);
    co_ctx.uc_stack.ss_sp = stack;
    co_ctx.uc_stack.ss_size = size;
    makecontext(&co_ctx, worker, 0);
    getcontext(&arr_ctx);
    arr_ctx.uc_stack.ss_sp = array_stack;
    arr_ctx.uc_stack.ss_size = sizeof array_stack;
    makecontext(&arr_ctx, on_array, 0);
    swapcontext(&main_ctx, &co_ctx);
    swapcontext(&main_ctx, &arr_ctx);
    swapcontext(&main_ctx, &co_ctx);
    puts("m");
    return 0;
}
"""


def _build(directory: Path, static: bool, optimise: str) -> Path:
    why = compiler_missing("c-static" if static else "c-dynamic")
    if why is not None:
        pytest.skip(f"cannot build a C program: {why}")
    source = directory / "labels.c"
    source.write_text(MAPPED_AND_ARRAY_C)
    program = directory / "labels"
    flags = ["-static"] if static else []
    subprocess.run(["gcc", *flags, "-g", optimise, "-o", program, source], check=True)
    return program


def _labels(path: Path) -> dict[str, str]:
    return {r.name: r.label for r in load_trace(path).metadata.stacks}


@pytest.mark.parametrize("optimise", ["-O0", "-O2"])
def test_an_mmapd_stack_and_a_static_array_are_labelled_by_their_first_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, optimise: str
) -> None:
    program = _build(tmp_path, static=True, optimise=optimise)
    recording = both_ways(monkeypatch, tmp_path, lambda out: record_elf(program, out))
    assert recording.metadata.stdout == "w\na\nw\nm\n"
    labels = _labels(recording.path)
    assert labels == {
        "mmap_65536": "stack of worker",
        "array_stack": "stack of on_array",  # the symbol names it; the label says more
        "stack": "",
    }


@pytest.mark.parametrize(
    ("static", "from_symbol"),
    [(True, "main"), (False, None), (False, "main"), (True, "on_array")],
    ids=["static-from-main", "dynamic", "dynamic-from-main", "static-from-on_array"],
)
def test_the_labels_hold_for_dynamic_programs_and_from(
    tmp_path: Path, static: bool, from_symbol: str | None
) -> None:
    """`--from on_array` starts on the array's stack at on_array's first instruction,
    and meets the mmap'd stack first when `worker` is resumed in its middle (after
    `puts`): it is still worker's stack, not that of the `puts` it calls next."""
    program = _build(tmp_path, static=static, optimise="-O1")
    path = record_elf(program, tmp_path / "t.parquet", from_symbol=from_symbol).path
    labels = _labels(path)
    assert labels["mmap_65536"] == "stack of worker"
    assert labels["array_stack"] == "stack of on_array"


def test_show_and_sql_print_the_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from stacktrace_lab.cli import main

    program = _build(tmp_path, static=True, optimise="-O0")
    path = record_elf(program, tmp_path / "t.parquet").path
    trace = load_trace(path)
    stack = trace.metadata.region("mmap_65536")
    rsp = trace.column("rsp")
    on_it = [i for i, v in enumerate(rsp.tolist()) if stack.base <= v <= stack.top]
    assert main(["show", str(path), "--step", str(on_it[0])]) == 0
    assert "stack mmap_65536 (stack of worker):" in capsys.readouterr().out
    query = "select label from regions where name = 'array_stack'"
    assert main(["query", str(path), query, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"label": "stack of on_array"}]
