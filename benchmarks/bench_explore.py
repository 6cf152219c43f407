"""Speed and memory of exploring a long trace: SQL views vs pandas, backtraces, `serve`.

Run by hand (a minute or two for a million steps; the machines are shared):

    python benchmarks/bench_explore.py                      # 1,000,000 steps
    python benchmarks/bench_explore.py --steps 2000000

It records benchmarks/call-heavy.toml for `--steps` steps, then runs each
phase in a child process of its own, so that its peak RSS (ru_maxrss) is its
own:

- `duckdb`: `stacktrace-lab query`'s views: every misaligned call and the
  number of writes, straight from the Parquet file;
- `pandas`: the same two answers after loading the trace with `Trace.rows()`
  (every row, stack snapshots included, in one DataFrame): what the views
  spare;
- `backtrace`: `show --step` at three quarters of the trace (the analysis pass,
  the frame history, the backtraces);
- `serve`: `stacktrace-lab serve`'s start (analysis pass, frames, the page),
  then the window around the step at three quarters, as the page fetches it
  (the first one past the first row group also checkpoints the stacks),
  another window, and a search for the next call from there.

The baseline row is a child that only imports what the phases import.
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(phase: str, trace_path: Path, steps: int) -> None:
    import numpy as np

    from stacktrace_lab.analysis.events import derive_facts
    from stacktrace_lab.explore.backtrace import backtraces
    from stacktrace_lab.explore.sql import connect, open_traces
    from stacktrace_lab.stepper.serve import ServedTrace
    from stacktrace_lab.trace.reader import load_trace

    info: dict[str, object] = {}
    start = time.perf_counter()
    if phase == "record":
        from stacktrace_lab.record.recorder import RecordOptions, record
        from stacktrace_lab.scenario import load_scenario

        record(load_scenario(SCENARIO), trace_path, RecordOptions(max_steps=steps))
    elif phase == "duckdb":
        con = connect(open_traces([trace_path]))
        (misaligned,) = con.execute("SELECT count(*) FROM calls WHERE NOT aligned").fetchall()
        (writes,) = con.execute("SELECT count(*) FROM accesses WHERE access = 'write'").fetchall()
        info = {"misaligned": misaligned[0], "writes": writes[0]}
    elif phase == "pandas":
        rows = load_trace(trace_path).rows()
        calls = rows[rows["insn"].astype(str).str.startswith("call")]
        info = {
            "misaligned": int((calls["rsp"] % 16 != 0).sum()),
            "writes": int(rows["writes"].map(len).sum()),
        }
    elif phase == "backtrace":
        trace = load_trace(trace_path)
        found = backtraces(derive_facts(trace), trace.num_rows * 3 // 4)
        info = {"frames": sum(len(b.frames) for b in found)}
    elif phase == "serve":
        trace = load_trace(trace_path)
        served = ServedTrace(trace)
        ready = time.perf_counter()
        target = trace.num_rows * 3 // 4
        window = served.window(target)
        fetched = time.perf_counter()
        served.window(target - 10_000)  # another window, once the checkpoints exist
        second = time.perf_counter()
        found = json.loads(served.find({"what": "call", "dir": "1", "from": str(target)}))
        info = {
            "start_s": ready - start,
            "first_window_s": fetched - ready,
            "next_window_s": second - fetched,
            "window_kib": len(window) / 1024,
            "find_s": time.perf_counter() - second,
            "next_call": found["step"],
        }
    elif phase != "baseline":
        raise SystemExit(f"unknown phase {phase}")
    del np
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_rss_mib(), **info}))


def run_child(phase: str, trace_path: Path, steps: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--steps", str(steps), str(trace_path)],
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
        child(args.phase, args.paths[0], args.steps)
        return

    with tempfile.TemporaryDirectory(prefix="bench-explore-") as tmp:
        trace_path = args.trace or Path(tmp) / "call-heavy.parquet"
        print(f"{'phase':<10} {'seconds':>8} {'peak RSS MiB':>13}  notes")
        phases = ("record", "baseline", "duckdb", "pandas", "backtrace", "serve")
        for phase in phases if args.trace is None else phases[1:]:
            r = run_child(phase, trace_path, args.steps)
            notes = {k: v for k, v in r.items() if k not in ("seconds", "peak_rss_mib")}
            text = ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in notes.items()
            )
            print(f"{phase:<10} {r['seconds']:>8.2f} {r['peak_rss_mib']:>13.0f}  {text}")


if __name__ == "__main__":
    main()
