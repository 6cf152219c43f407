"""The C recording core against 89b56b2 (the per-byte hooks) and against its own Python fallback.

Run by hand, in one run so that every figure sees the same machine load:

    python benchmarks/bench_native.py                      # baseline: /work/baseline/.venv
    python benchmarks/bench_native.py --baseline /path/to/venv --steps 1000000

Every measurement is a `stacktrace-lab record` in a child process of its own;
`CPU s` is that child's user + system time (all its threads), from wait4,
which varies much less than wall time on a shared machine. Rows:

- the tutorial's C and Rust programs (built here with gcc and rustc),
  recorded whole, and `--from main`;
- their per-step cost: the CPU difference of two runs at different
  `--max-steps`, divided by the difference in steps, so that start-up
  (imports, ELF symbols, the DWARF line table) cancels;
- benchmarks/call-heavy.toml end to end (`--steps`, default 1,000,000).

Each is run with this checkout's C core, with its pure-Python hooks
(`STACKTRACE_LAB_PURE_PYTHON=1`) and with the baseline install.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "call-heavy.toml"
DEFAULT_BASELINE = Path("/work/baseline/.venv")


def run(python: str, argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """`python -m stacktrace_lab argv` in a child: its CPU seconds, wall seconds, steps.

    From a scratch directory: `-m` puts the working directory first on the path,
    and this checkout's own package must not shadow the baseline's."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [python, "-m", "stacktrace_lab", *argv, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    assert child.stdout is not None and child.stderr is not None
    out = child.stdout.read()
    err = child.stderr.read()
    _pid, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {err.decode(errors='replace')}")
    summary = json.loads(out)
    return {"cpu": usage.ru_utime + usage.ru_stime, "wall": wall, "steps": summary["steps"]}


IN_PROCESS = """
import json, sys, time
from stacktrace_lab.record.elf_front import record_elf
program, out = sys.argv[1], sys.argv[2]
record_elf(program, out)  # reads the symbols and the DWARF line table once (cached)
for start in (None, "main"):
    cpu = time.process_time()
    steps = record_elf(program, out, from_symbol=start).metadata.steps
    print(json.dumps([start or "entry", steps, time.process_time() - cpu]))
"""


def in_process(python: str, program: Path, out: Path, env: dict[str, str]) -> list[list[object]]:
    """A second `record_elf` in one process (symbols and DWARF cached): the recording's
    own CPU, without imports and ELF reading. [[from, steps, CPU s], ...]"""
    result = subprocess.run(
        [python, "-c", IN_PROCESS, str(program), str(out)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


def build(tmp: Path) -> dict[str, Path]:
    from stacktrace_lab.examples import build_example, compiler_missing

    programs = {}
    for name, kind in (("C", "c-static"), ("Rust", "rust-static-pie")):
        why = compiler_missing(kind)
        if why is None:
            programs[name] = build_example(kind, tmp)
        else:
            print(f"{name} example skipped: {why}")
    return programs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE, help="its venv")
    parser.add_argument("--steps", type=int, default=1_000_000, help="call-heavy steps")
    parser.add_argument("--repeat", type=int, default=3, help="runs per per-step point")
    args = parser.parse_args()
    base_python = args.baseline / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k != "STACKTRACE_LAB_PURE_PYTHON"}
    sides = {
        "C core": (sys.executable, env),
        "pure Python": (sys.executable, {**env, "STACKTRACE_LAB_PURE_PYTHON": "1"}),
    }
    if base_python.exists():
        sides["89b56b2"] = (str(base_python), env)
    else:
        print(f"no baseline at {args.baseline}: measuring this checkout only")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}\n"
    )
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        programs = build(tmp / "bin")
        rows: list[tuple[str, str, dict[str, float]]] = []
        per_step: list[tuple[str, str, float]] = []
        for name, program in programs.items():
            small, big = (1_000, 10_000) if name == "C" else (1_000, 56_000)
            for side, (python, side_env) in sides.items():
                out = str(tmp / "t.parquet")
                whole = run(python, ["record", str(program), "-o", out], side_env)
                rows.append((f"{name} example, whole program", side, whole))
                start = run(python, ["record", str(program), "--from", "main", "-o", out], side_env)
                rows.append((f"{name} example, --from main", side, start))
                # The least CPU of a few runs each: start-up noise is larger than
                # the C core's whole recording of these programs.
                a, b = (
                    min(
                        (
                            run(
                                python,
                                ["record", str(program), "--max-steps", str(n), "-o", out],
                                side_env,
                            )
                            for _ in range(args.repeat)
                        ),
                        key=lambda r: r["cpu"],
                    )
                    for n in (small, big)
                )
                cost = (b["cpu"] - a["cpu"]) / (b["steps"] - a["steps"])
                per_step.append((f"{name} example", side, cost))
        warm: list[tuple[str, str, list[object]]] = []
        for name, program in programs.items():
            for side, (python, side_env) in sides.items():
                for row in in_process(python, program, tmp / "w.parquet", side_env):
                    warm.append((name, side, row))
        for side, (python, side_env) in sides.items():
            out = str(tmp / "s.parquet")
            argv = ["record", str(SCENARIO), "--max-steps", str(args.steps), "-o", out]
            rows.append((f"call-heavy, {args.steps:,} steps", side, run(python, argv, side_env)))

    print(
        f"{'record':<36} {'hooks':<12} {'steps':>10} {'CPU s':>7} {'wall s':>7} {'steps/CPU s':>12}"
    )
    for what, side, r in rows:
        rate = r["steps"] / r["cpu"]
        print(
            f"{what:<36} {side:<12} {int(r['steps']):>10,} {r['cpu']:>7.2f} "
            f"{r['wall']:>7.2f} {rate:>12,.0f}"
        )
    print(f"\n{'per-step CPU (two runs)':<40} {'hooks':<12} {'us/step':>8} {'steps/s':>12}")
    for what, side, cost in per_step:
        print(f"{what:<40} {side:<12} {cost * 1e6:>8.2f} {1 / cost if cost > 0 else 0:>12,.0f}")
    print(f"\n{'in one process, caches warm':<40} {'hooks':<12} {'steps':>8} {'CPU s':>7}")
    for name, side, (start, steps, cpu) in warm:
        print(f"{name + ' example from ' + str(start):<40} {side:<12} {steps:>8,} {cpu:>7.3f}")
    by = {(what, side): r for what, side, r in rows}
    costs = {(what, side): c for what, side, c in per_step}
    if "89b56b2" in sides:
        print()
        for what in dict.fromkeys(w for w, _s, _r in rows):
            ratio = by[(what, "89b56b2")]["cpu"] / by[(what, "C core")]["cpu"]
            print(f"CPU 89b56b2 / C core, {what}: {ratio:.1f}x")
        for what in dict.fromkeys(w for w, _s, _c in per_step):
            ratio = costs[(what, "89b56b2")] / costs[(what, "C core")]
            print(f"per-step CPU 89b56b2 / C core, {what}: {ratio:.1f}x")


if __name__ == "__main__":
    main()
