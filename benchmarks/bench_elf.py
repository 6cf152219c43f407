"""Time to record the tutorial's program end to end, as a real program.

    python benchmarks/bench_elf.py [--repeat 3] [--builds c-dynamic rust-dynamic]

Builds examples/first_switch.{c,rs} (gcc -static -O0 -g; rustc -g with
+crt-static at -O0 and -O, a static-pie; -O with relocation-model=static),
and the dynamically linked builds (plain gcc -O0 -g, plain rustc -g), then
times `record_elf` (ELF loading, DWARF line table, the discovery pass, the
recording pass, writing the trace) for each, from the entry and with
`--from main`; and, apart, what `--from main` skips: the fast-forward from
the entry (the loader and libc's start-up for a dynamic program) to main.
Best of --repeat runs, each in this process: symbols and the DWARF line
tables (the program's, and the libraries' separate debug files') are read
once per binary in a process, so the first run's time (reading them
included, as for one `stacktrace-lab record`) is shown apart. Wall seconds,
then CPU seconds (the recorder's two threads together).
Needs gcc and rustc.

    python benchmarks/bench_elf.py --command [--against DIR] [--builds rust-dynamic]

times the whole command a user types, `stacktrace-lab record PROG --from main`,
in a new process each run (Python's start-up and imports included: issue
#21's one second is for this), interleaved with the same command run from
the source tree DIR (a checkout of another commit, put first on PYTHONPATH,
with its C core built) when given. Wall and CPU seconds (the child's user +
system time): the first run, the best and the median of --repeat.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stacktrace_lab.examples import build_example, compiler_missing
from stacktrace_lab.record.linux import dwarf_lines, dynamic, elf
from stacktrace_lab.record.linux.elf_front import describe_elf, record_elf
from stacktrace_lab.record.machine.machine import Machine

BUILDS = [
    "c-static",
    "rust-static-pie-O0",
    "rust-static-pie",
    "rust-static",
    "c-dynamic",
    "rust-dynamic",
]


def fast_forward_to_main(program: Path, repeat: int) -> tuple[int, float]:
    """(instructions, best seconds) of the unrecorded run from the entry to main."""
    description = describe_elf(program, max_steps=1)
    main_at = description.symbols["main"]
    best, steps = float("inf"), 0
    for _ in range(repeat):
        machine = Machine(description.spec)
        began = time.perf_counter()
        assert machine.fast_forward(main_at) is None
        best = min(best, time.perf_counter() - began)
        steps = machine.fast_forwarded
    return steps, best


def run_command(program: Path, output: Path, source: Path | None) -> tuple[float, float]:
    """(wall, CPU) seconds of one `stacktrace-lab record PROG --from main` process."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    command = [sys.executable, "-m", "stacktrace_lab", "record", str(program)]
    command += ["--from", "main", "-o", str(output)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    # Run from the output's directory: `-m` puts the working directory first on
    # sys.path, before PYTHONPATH, and a checkout there would win.
    subprocess.run(command, env=env, check=True, capture_output=True, cwd=output.parent)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def time_commands(builds: list[str], repeat: int, against: Path | None) -> None:
    sides: list[tuple[str, Path | None]] = [("this", None)]
    if against is not None:
        sides.append((against.name, against))
    print(f"{'build':<14} {'tree':<10} {'wall 1st':>8} {'best':>6} {'median':>6} "
          f"{'cpu 1st':>8} {'best':>6} {'median':>6}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for build in builds:
            why = compiler_missing(build)
            if why is not None:
                print(f"{build:<14} skipped: {why}")
                continue
            program = build_example(build, out)
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in sides}
            for _ in range(repeat):  # interleaved: the machine's load falls on both
                for name, source in sides:
                    runs[name].append(run_command(program, out / f"{name}.parquet", source))
            for name, _ in sides:
                walls = [w for w, _ in runs[name]]
                cpus = [c for _, c in runs[name]]
                print(
                    f"{build:<14} {name:<10} {walls[0]:>8.2f} {min(walls):>6.2f} "
                    f"{statistics.median(walls):>6.2f} {cpus[0]:>8.2f} {min(cpus):>6.2f} "
                    f"{statistics.median(cpus):>6.2f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--builds", nargs="*", default=BUILDS, choices=BUILDS)
    parser.add_argument(
        "--command", action="store_true", help="time `stacktrace-lab record PROG --from main`"
    )
    parser.add_argument(
        "--against", type=Path, help="with --command: a source tree to compare with"
    )
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    if args.command:
        time_commands(args.builds, args.repeat, args.against)
        return
    header = (
        f"{'build':<20} {'from':<7} {'steps':>7} {'first s':>8} {'best s':>7} {'steps/s':>8} "
        f"{'cpu 1st':>8} {'cpu best':>7}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for build in args.builds:
            why = compiler_missing(build)
            if why is not None:
                print(f"{build:<20} skipped: {why}")
                continue
            program = build_example(build, out)
            for start in (None, "main"):
                # The first run reads symbols and DWARF (the libraries' debug files too).
                elf._parse.cache_clear()
                dwarf_lines.line_index.cache_clear()
                dynamic.build_id.cache_clear()
                dynamic.debug_link.cache_clear()
                times, cpu = [], []
                steps = 0
                for i in range(args.repeat):
                    began, began_cpu = time.perf_counter(), time.process_time()
                    rec = record_elf(program, out / f"{build}-{i}.parquet", from_symbol=start)
                    times.append(time.perf_counter() - began)
                    cpu.append(time.process_time() - began_cpu)  # both threads
                    steps = rec.metadata.steps
                best = min(times[1:] or times)
                print(
                    f"{build:<20} {start or 'entry':<7} {steps:>7,} {times[0]:>8.2f} "
                    f"{best:>7.2f} {steps / best:>8,.0f} {cpu[0]:>8.2f} {min(cpu[1:] or cpu):>7.2f}"
                )
            skipped, seconds = fast_forward_to_main(program, args.repeat)
            print(
                f"{build:<20} entry -> main unrecorded: {skipped:,} instructions in {seconds:.3f} s"
            )


if __name__ == "__main__":
    main()
