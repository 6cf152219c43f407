"""Recording speed and memory: the project's recorder against the naive one.

Run by hand (it takes a few minutes; the machines are shared, so compare the
ratio of the two rows, measured side by side in this one run):

    python benchmarks/bench_record.py                    # 1,000,000 steps each
    python benchmarks/bench_record.py --steps 10000000 --skip-naive
    python benchmarks/bench_record.py --steps 1000000 --commands   # + check/report/diff

Each measurement runs in a child process of its own, so peak RSS (VmHWM)
is that recording's alone. The two traces are compared for equal rows.
`CPU s` is the child's processor time (all its threads): on a busy shared
machine it varies much less than the wall-clock `seconds`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "call-heavy.toml"


def peak_rss() -> int:
    """This process's peak resident memory in bytes.

    VmHWM, not ru_maxrss: on Linux ru_maxrss carries over the parent's peak
    into a child it forks, and this parent may have read big traces.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(kind: str, steps: int, out: Path) -> None:
    sys.path.insert(0, str(HERE))
    from stacktrace_lab.record.recorder import RecordOptions, record
    from stacktrace_lab.scenario import load_scenario

    scenario = load_scenario(SCENARIO)
    start = time.perf_counter()
    cpu = time.process_time()
    if kind == "project":
        recorded = record(scenario, out, RecordOptions(max_steps=steps)).metadata.steps
    else:
        from naive_recorder import record_naive

        recorded = record_naive(scenario, out, steps)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    rss = peak_rss()
    size = out.stat().st_size
    result = {"steps": recorded, "seconds": seconds, "cpu": cpu, "rss": rss, "bytes": size}
    print(json.dumps(result))


def command(args: list[str]) -> dict[str, float]:
    """Run a stacktrace-lab command in a child process; its wall time and peak RSS."""
    code = (
        "import json, sys, time\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "from bench_record import peak_rss\n"
        "from stacktrace_lab.cli import main\n"
        "t = time.perf_counter()\n"
        f"rc = main({args!r})\n"
        "print(json.dumps({'rc': rc, 'seconds': time.perf_counter() - t, 'rss': peak_rss()}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(kind: str, steps: int, out: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--steps", str(steps), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def same_rows(a: Path, b: Path) -> bool:
    fa, fb = pq.ParquetFile(a), pq.ParquetFile(b)
    if fa.metadata.num_rows != fb.metadata.num_rows:
        return False
    for i in range(fa.num_row_groups):
        ta, tb = fa.read_row_group(i), fb.read_row_group(i)
        for name in ta.column_names:
            col_a, col_b = ta.column(name), tb.column(name)
            if pa.types.is_dictionary(col_a.type):  # dictionaries may differ, the strings not
                col_a, col_b = col_a.cast("string"), col_b.cast("string")
            if not col_a.equals(col_b):
                print(f"  differs: row group {i}, column {name}")
                return False
    return True


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument(
        "--naive-steps", type=int, help="steps for the naive recorder [default: --steps]"
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--commands", action="store_true", help="also time check, report and diff")
    parser.add_argument("--child", choices=["project", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.out)
        return

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.platform()}"
    )
    print(f"scenario: {SCENARIO.name}\n")
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        results = {"project": measure("project", args.steps, tmpdir / "project.parquet")}
        if not args.skip_naive:
            naive_steps = args.naive_steps or args.steps
            results["naive"] = measure("naive", naive_steps, tmpdir / "naive.parquet")
        header = ("recorder", "steps", "seconds", "steps/s", "CPU s", "peak RSS", "bytes/step")
        print("{:<10} {:>12} {:>9} {:>11} {:>7} {:>10} {:>11}".format(*header))
        for kind, r in results.items():
            rate = r["steps"] / r["seconds"]
            per_step = r["bytes"] / r["steps"]
            print(
                f"{kind:<10} {r['steps']:>12,} {r['seconds']:>9.2f} {rate:>11,.0f} "
                f"{r['cpu']:>7.2f} {mib(r['rss']):>10} {per_step:>11.2f}"
            )
        if "naive" in results:
            p, n = results["project"], results["naive"]
            ratio = (p["steps"] / p["seconds"]) / (n["steps"] / n["seconds"])
            print(f"\nspeed ratio project / naive: {ratio:.1f}x")
            if p["steps"] == n["steps"]:
                equal = same_rows(tmpdir / "project.parquet", tmpdir / "naive.parquet")
                print(f"same rows in both traces: {equal}")
        if args.commands:
            trace = str(tmpdir / "project.parquet")
            other = tmpdir / "other.parquet"
            measure("project", args.steps, other)
            print(f"\n{'command':<28} {'seconds':>9} {'peak RSS':>10} {'exit':>5}")
            for label, argv in [
                ("check", ["check", trace]),
                ("report", ["report", trace, "-o", str(tmpdir / "report")]),
                ("diff (identical traces)", ["diff", trace, str(other)]),
            ]:
                r = command(argv)
                print(f"{label:<28} {r['seconds']:>9.2f} {mib(r['rss']):>10} {int(r['rc']):>5}")


if __name__ == "__main__":
    main()
