"""Recording CPU of this checkout against 89b56b2, side by side: run by hand.

    python benchmarks/bench_native.py                      # baseline: /work/baseline/.venv
    python benchmarks/bench_native.py --repeat 7 --baseline /path/to/venv --pure-python

Every measurement is `python -m stacktrace_lab record ... --json` in a child
process of its own, started from a scratch directory (so `-m` imports the
side's own installed package, not this checkout). `CPU s` is the child's
user + system time (all its threads) from `os.wait4`, which varies much less
than wall time on a shared machine. The sides run interleaved (side A, side B,
side A, ...) so both see the same load.

What is measured, for the tutorial's C and Rust programs (built here with gcc
and rustc, static):

- **per step** (issue 19's 50x goal): `record --max-steps SMALL` and
  `record --max-steps LARGE` (LARGE: the whole program), `--repeat` runs each.
  The per-step CPU is (CPU(LARGE) - CPU(SMALL)) / (steps(LARGE) - steps(SMALL)),
  so start-up (imports, ELF symbols, the DWARF line table) cancels; computed
  from the minimum and from the median of the runs. The ratio baseline / this
  checkout is the figure the goal asks for;
- **end to end**: the whole program (and with `--from-main`, `record --from main`),
  the median CPU of the runs;

- **per step, in one process** (`--in-process`): the same difference, between
  recordings in one child per side after one of each to warm up, so start-up
  and one-time work (imports, the ELF's symbols, reading the DWARF line table)
  are out and the start-up's noise with them; a steadier figure for a program
  whose whole run costs little more than its start-up (the C example);

and benchmarks/call-heavy.toml (a scenario): `--steps` steps end to end (steps per
CPU second and per wall second, and the trace's bytes per step) and per step as
the difference with a run of a tenth of the steps. Issue 19's scenario goal
(1 M steps/s, 4x 89b56b2) is read from the wall rate, the whole `record` command
on this 2-core machine, where the recorder emulates, converts and writes on
separate threads; the CPU rate is printed beside it. Only the scenario:

    python benchmarks/bench_native.py --skip-programs --repeat 4 --steps 10000000

`--before VENV` adds a third side, another install of this project (say
main's venv before a change), run interleaved with the other two.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "call-heavy.toml"
DEFAULT_BASELINE = Path("/work/baseline/.venv")
#: The short run of each per-step pair: start-up and the first thousand steps.
SMALL = 1_000


@dataclass
class Runs:
    """Repeated runs of one command on one side."""

    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    steps: int = 0
    #: The trace's size in bytes (the last run's).
    bytes: int = 0

    def add(self, result: dict[str, float]) -> None:
        self.cpu.append(result["cpu"])
        self.wall.append(result["wall"])
        self.steps = int(result["steps"])
        self.bytes = int(result["bytes"])

    def pick(self, how: str) -> float:
        return min(self.cpu) if how == "min" else statistics.median(self.cpu)


def run(python: str, argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """`python -m stacktrace_lab argv --json` in a child: its CPU seconds, wall seconds,
    steps, and the size of the trace it wrote (`-o`)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(
            ["nice", "-n", "5", python, "-m", "stacktrace_lab", *argv, "--json"],
            stdout=out,
            stderr=err,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        _pid, status, usage = os.wait4(child.pid, 0)
        child.returncode = 0  # reaped here; keep Popen from waiting again
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if status != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {err.read().decode(errors='replace')}")
        summary = json.loads(out.read())
    size = Path(argv[argv.index("-o") + 1]).stat().st_size
    return {
        "cpu": usage.ru_utime + usage.ru_stime,
        "wall": wall,
        "steps": summary["steps"],
        "bytes": size,
    }


#: A child's script for --in-process: record `program` at SMALL steps and whole,
#: once each to warm up (imports, symbols, the DWARF line table, caches), then
#: `repeat` times each, interleaved; prints the CPU seconds (all threads) of each.
IN_PROCESS = """
import json, resource, sys
try:
    from stacktrace_lab.record.linux.elf_front import record_elf
except ImportError:  # 89b56b2's layout
    from stacktrace_lab.record.elf_front import record_elf
from stacktrace_lab.record.recorder import RecordOptions

program, out, small, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cpu = {"small": [], "large": []}
steps = {}
def cpu_now():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
for run in range(repeat + 1):
    for size, limit in (("small", small), ("large", None)):
        before = cpu_now()
        recording = record_elf(program, out, RecordOptions(max_steps=limit))
        if run:
            cpu[size].append(cpu_now() - before)
        steps[size] = recording.metadata.steps
print(json.dumps({"cpu": cpu, "steps": steps}))
"""


def in_process(python: str, env: dict[str, str], program: Path, out: str, repeat: int) -> Any:
    """Per-step CPU (min, median) of recordings in one process (see IN_PROCESS)."""
    child = subprocess.run(
        ["nice", "-n", "5", python, "-c", IN_PROCESS, str(program), out, str(SMALL), str(repeat)],
        capture_output=True,
        env=env,
        cwd=tempfile.gettempdir(),
        check=False,
    )
    if child.returncode != 0:
        raise SystemExit(f"in-process run failed: {child.stderr.decode(errors='replace')}")
    found = json.loads(child.stdout)
    steps = found["steps"]["large"] - found["steps"]["small"]
    small, large = found["cpu"]["small"], found["cpu"]["large"]
    return (
        (min(large) - min(small)) / steps,
        (statistics.median(large) - statistics.median(small)) / steps,
    )


def build(tmp: Path, names: list[str]) -> dict[str, Path]:
    from stacktrace_lab.examples import build_example, compiler_missing

    programs = {}
    for name, kind in (("C", "c-static"), ("Rust", "rust-static-pie")):
        if name not in names:
            continue
        why = compiler_missing(kind)
        if why is None:
            programs[name] = build_example(kind, tmp)
        else:
            print(f"{name} example skipped: {why}")
    return programs


def per_step(small: Runs, large: Runs, how: str) -> float:
    """CPU seconds per step between the two runs (start-up cancels)."""
    return (large.pick(how) - small.pick(how)) / max(large.steps - small.steps, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE, help="its venv")
    parser.add_argument(
        "--before",
        type=Path,
        help="also another venv of this project (e.g. main's), measured as side 'before'",
    )
    parser.add_argument("--steps", type=int, default=1_000_000, help="call-heavy steps")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each per-step point")
    parser.add_argument(
        "--pure-python", action="store_true", help="also this checkout's Python hooks"
    )
    parser.add_argument("--skip-scenario", action="store_true", help="programs only")
    parser.add_argument("--skip-programs", action="store_true", help="the scenario only")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="also per step within one process per side (start-up and one-time work out)",
    )
    parser.add_argument(
        "--programs",
        nargs="+",
        choices=("C", "Rust"),
        default=["C", "Rust"],
        help="which examples (default both); C alone affords more --repeat",
    )
    parser.add_argument(
        "--from-main", action="store_true", help="also `record --from main` (slow at 89b56b2)"
    )
    args = parser.parse_args()
    base_python = args.baseline / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "STACKTRACE_LAB_PURE_PYTHON"}
    sides = {"this checkout": (sys.executable, env)}
    if args.before is not None:
        sides["before"] = (str(args.before / "bin" / "python"), env)
    if args.pure_python:
        sides["pure Python"] = (sys.executable, {**env, "STACKTRACE_LAB_PURE_PYTHON": "1"})
    if base_python.exists():
        sides["89b56b2"] = (str(base_python), env)
    else:
        print(f"no baseline at {args.baseline}: measuring this checkout only")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}"
    )
    runs: dict[tuple[str, str], Runs] = {}

    def measure(what: str, side: str, argv: list[str]) -> None:
        python, side_env = sides[side]
        runs.setdefault((what, side), Runs()).add(run(python, argv, side_env))

    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        programs = {} if args.skip_programs else build(tmp / "bin", args.programs)
        out = str(tmp / "t.parquet")
        for _ in range(args.repeat):
            for name, program in programs.items():
                for side in sides:
                    record = ["record", str(program), "-o", out]
                    measure(
                        f"{name}: --max-steps {SMALL:,}", side, [*record, "--max-steps", str(SMALL)]
                    )
                    measure(f"{name}: whole program", side, record)
                    if args.from_main:
                        measure(f"{name}: --from main", side, [*record, "--from", "main"])
        inside: dict[tuple[str, str], Any] = {}
        if args.in_process:
            for name, program in programs.items():
                for side, (python, side_env) in sides.items():
                    inside[(name, side)] = in_process(python, side_env, program, out, args.repeat)
        if not args.skip_scenario:
            short = max(args.steps // 10, 1)
            for _ in range(max(args.repeat // 2, 2)):
                for side in sides:
                    for n in (short, args.steps):
                        argv = ["record", str(SCENARIO), "--max-steps", str(n), "-o", out]
                        measure(f"call-heavy: {n:,} steps", side, argv)
    print(f"load average at the end {os.getloadavg()[0]:.1f}\n")
    print(
        f"{'record':<34} {'side':<14} {'steps':>9} {'CPU s min':>9} {'median':>7} "
        f"{'wall s min':>10} {'median':>7} {'runs':>4}"
    )
    for (what, side), r in runs.items():
        print(
            f"{what:<34} {side:<14} {r.steps:>9,} {min(r.cpu):>9.3f} "
            f"{statistics.median(r.cpu):>7.3f} {min(r.wall):>10.2f} "
            f"{statistics.median(r.wall):>7.2f} {len(r.cpu):>4}"
        )
    print(
        f"\n{'per step (difference of two runs)':<34} {'side':<14} "
        f"{'us/step min':>11} {'median':>7}"
    )
    costs: dict[tuple[str, str], tuple[float, float]] = {}
    pairs = [
        (name, f"{name}: --max-steps {SMALL:,}", f"{name}: whole program") for name in programs
    ]
    if not args.skip_scenario:
        short = max(args.steps // 10, 1)
        pairs.append(
            ("call-heavy", f"call-heavy: {short:,} steps", f"call-heavy: {args.steps:,} steps")
        )
    for name, small, large in pairs:
        for side in sides:
            a, b = runs[(small, side)], runs[(large, side)]
            cost = (per_step(a, b, "min"), per_step(a, b, "median"))
            costs[(name, side)] = cost
            print(f"{name:<34} {side:<14} {cost[0] * 1e6:>11.3f} {cost[1] * 1e6:>7.3f}")
    if inside:
        print(f"\n{'per step, in one process':<34} {'side':<14} {'us/step min':>11} {'median':>7}")
        for (name, side), (low, middle) in inside.items():
            print(f"{name:<34} {side:<14} {low * 1e6:>11.3f} {middle * 1e6:>7.3f}")
        if "89b56b2" in sides:
            for name in programs:
                old_cost, new_cost = inside[(name, "89b56b2")], inside[(name, "this checkout")]
                print(
                    f"  ratio in one process, {name}: {old_cost[0] / new_cost[0]:.1f}x (min), "
                    f"{old_cost[1] / new_cost[1]:.1f}x (median)"
                )
    if "89b56b2" in sides:
        print("\nratios, 89b56b2 / this checkout (CPU):")
        for name, _small, _large in pairs:
            old, new = costs[(name, "89b56b2")], costs[(name, "this checkout")]
            ratio = [o / n if n > 0 else float("inf") for o, n in zip(old, new, strict=True)]
            print(f"  per step, {name}: {ratio[0]:.1f}x (min), {ratio[1]:.1f}x (median)")
        for what in dict.fromkeys(w for w, _s in runs):
            old_r, new_r = runs[(what, "89b56b2")], runs[(what, "this checkout")]
            print(f"  end to end, {what}: {old_r.pick('median') / new_r.pick('median'):.1f}x")
    if not args.skip_scenario:
        for side in sides:
            print(f"\ncall-heavy, {side}:")
            r = runs[(f"call-heavy: {args.steps:,} steps", side)]
            cost = costs[("call-heavy", side)]
            print(
                f"  end to end {r.steps / statistics.median(r.wall):,.0f} steps per wall s "
                f"(fastest run {r.steps / min(r.wall):,.0f}), "
                f"{r.steps / r.pick('median'):,.0f} steps per CPU s; "
                f"without start-up {1 / cost[1]:,.0f} steps per CPU s; "
                f"{r.bytes / r.steps:.2f} bytes per step"
            )
        if "89b56b2" in sides:
            what = f"call-heavy: {args.steps:,} steps"
            old_r, new_r = runs[(what, "89b56b2")], runs[(what, "this checkout")]
            wall = statistics.median(old_r.wall) / statistics.median(new_r.wall)
            fastest = min(old_r.wall) / min(new_r.wall)
            print(
                f"\n  end to end, {what}, wall: {wall:.1f}x 89b56b2 (median), "
                f"{fastest:.1f}x (fastest runs)"
            )
            if "before" in sides:
                before_r = runs[(what, "before")]
                print(
                    f"  end to end, {what}, wall: "
                    f"{statistics.median(before_r.wall) / statistics.median(new_r.wall):.2f}x "
                    f"before (median), {min(before_r.wall) / min(new_r.wall):.2f}x (fastest runs); "
                    f"CPU {before_r.pick('median') / new_r.pick('median'):.2f}x before (median)"
                )


if __name__ == "__main__":
    main()
