"""Speed and memory of `check` and `report` on a long, call-heavy trace.

Run by hand (a minute or so for a million steps; the machines are shared):

    python benchmarks/bench_analysis.py                      # 1,000,000 steps
    python benchmarks/bench_analysis.py --steps 10000000     # ten million

It records benchmarks/call-heavy.toml (nested calls in a loop on a second
stack: about 9% calls, 9% rets and 31% writes) for `--steps` steps, then
times the library calls that `stacktrace-lab check` and `stacktrace-lab
report` make, each in a child process of its own so that its peak RSS
(ru_maxrss) is its own. The recording runs in a child too: on Linux a child's
ru_maxrss starts from its parent's RSS at fork, so the parent stays small.
The baseline row is a child that only imports what the commands import: the
difference is what the analysis itself holds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "call-heavy.toml"


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(phase: str, trace_path: Path, out_dir: Path, steps: int) -> None:
    from stacktrace_lab.analysis import check
    from stacktrace_lab.report.build import build_report
    from stacktrace_lab.trace.reader import load_trace

    info: dict[str, object] = {}
    start = time.perf_counter()
    if phase == "record":
        from stacktrace_lab.record.recorder import RecordOptions, record
        from stacktrace_lab.scenario import load_scenario

        record(load_scenario(SCENARIO), trace_path, RecordOptions(max_steps=steps))
        info = trace_facts(trace_path)
    elif phase == "check":
        result = check(load_trace(trace_path))
        assert result.holds, result.failed
    elif phase == "report":
        report = build_report(load_trace(trace_path), out_dir)
        assert report.check.holds, report.check.failed
    elif phase != "baseline":
        raise SystemExit(f"unknown phase {phase}")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_rss_mib(), **info}))


def trace_facts(trace_path: Path) -> dict[str, object]:
    """Rows, size on disk, and the size of the fixed-width columns once decoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(trace_path)
    rows = parquet.metadata.num_rows
    width = 0
    for field in parquet.schema_arrow:
        if pa.types.is_fixed_size_binary(field.type):
            width += field.type.byte_width
        elif pa.types.is_integer(field.type):
            width += field.type.bit_width // 8
    return {
        "rows": rows,
        "row_groups": parquet.num_row_groups,
        "disk_mib": trace_path.stat().st_size / 2**20,
        "decoded_mib": rows * width / 2**20,
    }


def run_child(phase: str, trace_path: Path, out_dir: Path, steps: int) -> dict[str, float]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--phase",
            phase,
            "--steps",
            str(steps),
            str(trace_path),
            str(out_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--trace", type=Path, help="use this trace instead of recording one")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        child(args.phase, args.paths[0], args.paths[1], args.steps)
        return

    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as tmp:
        out = Path(tmp) / "report"
        trace_path = args.trace or Path(tmp) / "call-heavy.parquet"
        print(f"{'phase':<10} {'seconds':>8} {'peak RSS MiB':>13}")
        phases = ("record", "baseline", "check", "report")
        for phase in phases if args.trace is None else phases[1:]:
            r = run_child(phase, trace_path, out, args.steps)
            print(f"{phase:<10} {r['seconds']:>8.2f} {r['peak_rss_mib']:>13.0f}")
            if phase == "record":
                print(
                    f"  trace: {r['rows']:,} rows in {r['row_groups']} row groups, "
                    f"{r['disk_mib']:.1f} MiB on disk, {r['decoded_mib']:,.0f} MiB of "
                    "fixed-width columns (registers, snapshots) once decoded"
                )


if __name__ == "__main__":
    main()
