"""The CPU starts as Linux starts a process (record/machine/initial_state.py), scenarios too.

Unicorn's own start (x87 control word 0, MXCSR 0, null selectors) computes x87
arithmetic in single precision: `sinl` printed other digits than the real run.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from stacktrace_lab.examples import compiler_missing
from stacktrace_lab.record.linux.elf_front import record_elf
from stacktrace_lab.record.recorder import Recording
from stacktrace_lab.trace import load_trace

#: Stores what the program sees of the state that is not in a trace row.
PROBE = """
main:
    fnstcw -2(%rsp)
    fnstsw -4(%rsp)
    stmxcsr -8(%rsp)
    fnstenv -40(%rsp)
    mov %cs, %eax
    mov %ss, %ebx
    mov %ds, %ecx
    hlt
"""

FLOATING_POINT_C = r"""
#include <math.h>
#include <stdio.h>
int main(int argc, char **argv) {
    volatile double x = 0.7 + argc - 1;
    volatile long double third = 1.0L / (2 + argc);
    printf("%f %.17g %.21Lg %.21Lg\n", 1.0 / 3.0, sin(x), third, sinl(third));
    return 0;
}
"""


def _written(trace_path: Path, step: int) -> bytes:
    (write,) = load_trace(trace_path).table(["writes"]).column("writes")[step].as_py()
    data: bytes = write["data"]
    return data


def test_a_scenario_starts_with_linuxs_fpu_sse_flags_and_selectors(
    record_source: Callable[..., Recording],
) -> None:
    rec = record_source(PROBE)
    trace = load_trace(rec.path)
    assert rec.metadata.initial["rflags"] == 0x202
    assert _written(rec.path, 0) == (0x37F).to_bytes(2, "little")  # fnstcw
    assert _written(rec.path, 1) == bytes(2)  # fnstsw: no exception, top 0
    assert _written(rec.path, 2) == (0x1F80).to_bytes(4, "little")  # stmxcsr
    env = load_trace(rec.path).table(["writes"]).column("writes")[3].as_py()
    tags = b"".join(w["data"] for w in env)[8:10]
    assert tags == b"\xff\xff"  # every x87 register empty
    last = trace.table(["rax", "rbx", "rcx"]).to_pylist()[-1]
    assert (last["rax"], last["rbx"], last["rcx"]) == (0x33, 0x2B, 0)


def test_x87_arithmetic_prints_what_the_real_run_prints(tmp_path: Path) -> None:
    why = compiler_missing("c-static")
    if why is not None:
        pytest.skip(f"cannot build a C program: {why}")
    source = tmp_path / "fp.c"
    source.write_text(FLOATING_POINT_C)
    program = tmp_path / "fp"
    subprocess.run(["gcc", "-static", "-O1", "-o", program, source, "-lm"], check=True)
    native = subprocess.run([program], capture_output=True, text=True, check=True).stdout
    recorded = record_elf(program, tmp_path / "fp.parquet").metadata
    assert recorded.stop.reason == "exit"
    assert recorded.stdout == native
    # The digits that single precision (unicorn's start) gets wrong are there.
    assert native.split()[-1] == "0.327194696796152244186"
