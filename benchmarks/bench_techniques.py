"""What each recording technique costs per step, measured side by side in one run.

    python benchmarks/bench_techniques.py [--steps 300000]

Runs the call-heavy benchmark program under hooks of increasing work and
prints steps per second for each, so the choices in
stacktrace_lab/record/machine/machine.py can be checked on any machine:
raw ctypes hooks instead of the binding's hook_add, one uc_reg_read_batch
call (through the library loaded without argtypes) instead of 18 reg_read
calls, and stack snapshots derived from the write log instead of a mem_read
per step.
"""

from __future__ import annotations

import argparse
import ctypes
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unicorn import UC_HOOK_CODE
from unicorn.unicorn_py3.arch.types import uc_hook_h
from unicorn.unicorn_py3.unicorn import HOOK_CODE_CFUNC, Uc, uclib

from stacktrace_lab.record.machine.machine import UC_IDS, Machine
from stacktrace_lab.record.recorder import build_program, machine_spec, snapshot_windows
from stacktrace_lab.scenario import load_scenario

SCENARIO = Path(__file__).resolve().parent / "call-heavy.toml"
RAW = ctypes.CDLL(uclib._name)


def fresh() -> tuple[Machine, Any]:
    scenario = load_scenario(SCENARIO)
    program, regions = build_program(scenario)
    spec = machine_spec(program, regions, scenario.entry)
    return Machine(spec), (spec, regions)


def run(label: str, install: Callable[[Uc, list[int]], None], steps: int) -> None:
    machine, (spec, _regions) = fresh()
    count = [0]
    install(machine.uc, count)
    start = time.perf_counter()
    machine.uc.emu_start(spec.entry, spec.sentinel, 0, steps)
    seconds = time.perf_counter() - start
    print(f"{label:<58} {steps / seconds:>12,.0f} steps/s  {seconds / steps * 1e6:6.2f} µs/step")


def raw_hook(uc: Uc, body: Callable[[], None]) -> None:
    def on_code(_h: Any, _address: int, _size: int, _user: Any) -> None:
        body()

    callback = HOOK_CODE_CFUNC(on_code)
    uc._keep_alive = callback  # type: ignore[attr-defined]
    handle = uc_hook_h()
    uclib.uc_hook_add(
        uc._uch,
        ctypes.byref(handle),
        UC_HOOK_CODE,
        callback,
        None,
        ctypes.c_uint64(1),
        ctypes.c_uint64(0),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300_000)
    steps = parser.parse_args().steps
    n = len(UC_IDS)
    ids = (ctypes.c_int * n)(*UC_IDS)
    values = (ctypes.c_uint64 * n)()
    pointers = (ctypes.c_void_p * n)(*[ctypes.addressof(values) + 8 * i for i in range(n)])
    _, (_, regions) = fresh()
    windows = list(snapshot_windows(regions, 512).values())

    run("unicorn alone, no hook", lambda uc, c: None, steps)
    run(
        "empty hook through the binding's hook_add",
        lambda uc, c: uc.hook_add(UC_HOOK_CODE, lambda *a: None),
        steps,
    )
    run("empty raw ctypes hook", lambda uc, c: raw_hook(uc, lambda: None), steps)
    run(
        "binding hook + 18 x Uc.reg_read",
        lambda uc, c: uc.hook_add(UC_HOOK_CODE, lambda u, *a: [u.reg_read(r) for r in UC_IDS]),
        steps,
    )

    def batch_binding(uc: Uc, c: list[int]) -> None:
        uch = uc._uch
        raw_hook(uc, lambda: uclib.uc_reg_read_batch(uch, ids, pointers, n))

    def batch_raw(uc: Uc, c: list[int]) -> None:
        uch, read = uc._uch, RAW.uc_reg_read_batch
        raw_hook(uc, lambda: read(uch, ids, pointers, n))

    def batch_raw_append(uc: Uc, c: list[int]) -> None:
        uch, read, out = uc._uch, RAW.uc_reg_read_batch, bytearray()

        def body() -> None:
            read(uch, ids, pointers, n)
            out.extend(values)

        raw_hook(uc, body)

    def batch_raw_append_mem_read(uc: Uc, c: list[int]) -> None:
        uch, read, out = uc._uch, RAW.uc_reg_read_batch, bytearray()

        def body() -> None:
            read(uch, ids, pointers, n)
            out.extend(values)
            for w in windows:
                out.extend(uc.mem_read(w.base, w.size))

        raw_hook(uc, body)

    run("raw hook + uc_reg_read_batch via the binding's prototypes", batch_binding, steps)
    run("raw hook + uc_reg_read_batch without argtypes", batch_raw, steps)
    run("  ... + append to a bytearray (the recorder's hook)", batch_raw_append, steps)
    run("  ... + mem_read of each stack window (not done)", batch_raw_append_mem_read, steps)


if __name__ == "__main__":
    main()
