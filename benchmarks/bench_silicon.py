"""Silicon check speed: the native single-stepper, the emulated side and the comparison.

Run by hand (the machines are shared: compare figures measured side by side
in this one run, not across runs):

    python benchmarks/bench_silicon.py                  # 200,000 steps of call-heavy
    python benchmarks/bench_silicon.py --steps 1000000
    python benchmarks/bench_silicon.py --elf ./first_switch_c   # an ELF (static or dynamic)
    python benchmarks/bench_silicon.py --elf ./first_switch_c --from main

With --elf, the whole check (`silicon_check`: the native pass, the
emulation, the comparisons) is also timed in CPU seconds, the tool's and the
traced program's, whole and from --from if given: what `/usr/bin/time -f
'%U+%S' stacktrace-lab silicon-check ...` shows, less the imports.

With --elf and --cli, the whole command is timed as a user runs it, imports
included: `stacktrace-lab silicon-check ELF` in a child process, --repeat
times, its user+sys CPU (the tool's and the traced program's). Give
--cli one or more `stacktrace-lab` executables (another checkout's venv, the
baseline's) to time them side by side, run after run in turn:

    python benchmarks/bench_silicon.py --elf ./fs_c --cli .venv/bin/stacktrace-lab \
        /work/baseline/.venv/bin/stacktrace-lab --repeat 5

The native stepper pays two kernel round trips per instruction
(PTRACE_SYSEMU_SINGLESTEP with its wait, PTRACE_GETREGS), more at each system
call the sandbox answers, and decodes each distinct instruction once
(capstone's detail: its flags for the comparison, where it stores for the
memory reads after it); the comparison is whole-column numpy work.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "call-heavy.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--elf", type=Path, help="an x86-64 ELF instead of call-heavy")
    parser.add_argument("--from", dest="from_symbol", help="also time the check from here")
    parser.add_argument(
        "--cli",
        nargs="+",
        metavar="STACKTRACE_LAB",
        help="with --elf: time `STACKTRACE_LAB silicon-check ELF` whole (each one given, in turn)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs of each --cli command")
    args = parser.parse_args()
    if args.cli:
        if args.elf is None:
            parser.error("--cli needs --elf")
        time_commands(args.cli, args.elf, args.repeat)
        return

    from stacktrace_lab.silicon.check import elf_target, scenario_target
    from stacktrace_lab.silicon.compare import compare
    from stacktrace_lab.silicon.native import run_native
    from stacktrace_lab.silicon.ptrace import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise SystemExit(f"cannot run natively: {reason}")
    with tempfile.TemporaryDirectory() as workdir:
        if args.elf is not None:
            target = elf_target(args.elf)
        else:
            target = scenario_target(str(SCENARIO), Path(workdir))
        start = time.perf_counter()
        native = run_native(
            target.executable,
            start=target.entry,
            sentinel=target.sentinel,
            max_steps=args.steps,
            linked_entry=target.linked_entry,
            linux=target.linux,
            file_view=target.file_view,
        )
        native_s = time.perf_counter() - start
    target = target.relocated(native.load_bias)
    start = time.perf_counter()
    emulated = target.emulate(native, max(native.skipped, 0) + native.steps + 1, None)
    emulated_s = time.perf_counter() - start
    start = time.perf_counter()
    comparison = compare(
        native, emulated, name_address=target.name_address, source_line=target.source_line
    )
    compare_s = time.perf_counter() - start
    assert comparison.same, comparison.divergence
    steps = native.steps
    name = args.elf.name if args.elf is not None else SCENARIO.name
    print(f"{platform.processor() or platform.machine()}, {steps:,} steps of {name}")
    print(f"{'part':<32}{'seconds':>10}{'steps/s':>14}")
    for part, seconds in (
        ("native single-step (ptrace)", native_s),
        ("emulated (recorder's machine)", emulated_s),
        ("normalise + compare", compare_s),
    ):
        print(f"{part:<32}{seconds:>10.3f}{steps / seconds:>14,.0f}")
    print(f"identical: {comparison.compared_steps:,} steps; normalised rows: "
          f"{comparison.normalisations}")  # fmt: skip
    if args.elf is not None:
        from stacktrace_lab.silicon.check import silicon_check

        for from_symbol in (None, args.from_symbol) if args.from_symbol else (None,):
            before = os.times()
            result = silicon_check(str(args.elf), from_symbol=from_symbol)
            after = os.times()
            cpu = sum(after[:4]) - sum(before[:4])  # user + system, the tool's and children's
            label = f"whole check{f' --from {from_symbol}' if from_symbol else ''}"
            same = "same" if result.comparison.same else "DIFFERS"
            print(f"{label:<32}{cpu:>10.3f} s CPU, {result.comparison.compared_steps:,} steps, "
                  f"{same}")  # fmt: skip


def time_commands(commands: list[str], elf: Path, repeat: int) -> None:
    """Each `command silicon-check elf` `repeat` times, in turn: user+sys CPU of the
    process and its children (the traced program), as /usr/bin/time counts it."""
    cpu: dict[str, list[float]] = {command: [] for command in commands}
    status: dict[str, int] = {}
    for _ in range(repeat):
        for command in commands:
            before = os.times()
            done = subprocess.run(
                [command, "silicon-check", str(elf)], capture_output=True, check=False
            )
            after = os.times()
            if done.returncode not in (0, 1):  # 1: it ran and found a difference
                raise SystemExit(f"{command} silicon-check {elf}: exit {done.returncode}")
            status[command] = done.returncode
            cpu[command].append(after.children_user + after.children_system
                                - before.children_user - before.children_system)  # fmt: skip
    print(f"`STACKTRACE_LAB silicon-check {elf}`, user+sys CPU seconds, {repeat} runs in turn")
    for command, seconds in cpu.items():
        runs = " ".join(f"{s:.2f}" for s in seconds)
        print(f"{command}: median {statistics.median(seconds):.2f} s (runs: {runs}), "
              f"exit {status[command]}")  # fmt: skip


if __name__ == "__main__":
    main()
