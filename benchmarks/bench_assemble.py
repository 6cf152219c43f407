"""What the GNU-as front end, the keystone worker process and the guard cost per record.

Run by hand (the machines are shared, so run it twice and read the medians):

    python benchmarks/bench_assemble.py               # 20 rounds
    python benchmarks/bench_assemble.py --rounds 50

For each program (the largest built-in, green-threads, and the real-shaped
two-file test program) it times, side by side in one run:

- `assemble()`: the whole path a record takes once the process's keystone
  worker runs (every record after the first): front end, one request to the
  worker, label read-back, the miscompile guard;
- the same keystone text assembled in this process (what the tool did before
  the crash shield): keystone's own share;
- starting a worker and assembling one instruction: what the first record
  of a process pays on top.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from stacktrace_lab.layout import CODE_BASE, region_symbols
from stacktrace_lab.record.asm.assembler import assemble, keystone_input
from stacktrace_lab.record.asm.keystone_worker import KeystoneWorker
from stacktrace_lab.record.recorder import lay_out
from stacktrace_lab.scenario import load_scenario

HERE = Path(__file__).resolve().parent
PROGRAMS = {
    "green-threads": "green-threads",
    "real-shaped (.s + .S)": str(
        HERE.parent / "tests" / "asm" / "real_shaped" / "real_shaped.toml"
    ),
}


def median_ms(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def worker_start() -> None:
    with KeystoneWorker() as worker:
        worker.assemble("nop", CODE_BASE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    rounds = parser.parse_args().rounds
    print(f"median of {rounds} rounds, milliseconds")
    print(f"{'program':28} {'assemble()':>11} {'in-process ks':>14} {'worker start':>13}")
    start_ms = median_ms(worker_start, rounds)
    for label, name in PROGRAMS.items():
        scenario = load_scenario(name)
        constants = region_symbols(lay_out(scenario))
        text = "\n".join(keystone_input(scenario, constants).lines)
        ks = Ks(KS_ARCH_X86, KS_MODE_64)
        full = median_ms(lambda s=scenario, c=constants: assemble(s, c), rounds)
        in_process = median_ms(lambda t=text, k=ks: k.asm(t, CODE_BASE), rounds)
        print(f"{label:28} {full:11.1f} {in_process:14.1f} {start_ms:13.1f}")


if __name__ == "__main__":
    main()
