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

`--commands` instead runs every reading command of the command line on a trace
(`check`, `report`, `diff`, `diff --align`, `show --step`, `query` with two
SQL views, and `serve` up to its first page and first window, then up to the
chart, switches and backtraces the page fetches once the server has read
every step), each in a
process of its own, with this checkout and with another install side by side,
and prints peak RSS and CPU seconds (user + system, from `wait4`) of each:

    python benchmarks/bench_analysis.py --commands --trace T.parquet \
        --baseline "env PYTHONPATH=/work/baseline python -m stacktrace_lab"
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
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


def reading_commands(trace: Path, out: Path, steps: int) -> dict[str, list[str]]:
    """Each reading command's arguments, on `trace`."""
    return {
        "check": ["check", str(trace)],
        "report": ["report", str(trace), "-o", str(out / "report")],
        "diff": ["diff", str(trace), str(trace)],
        "diff --align": ["diff", "--align", str(trace), str(trace)],
        "show --step": ["show", "--step", str(steps * 3 // 4), str(trace)],
        "query calls": ["query", str(trace), "SELECT count(*) FROM calls WHERE NOT aligned"],
        "query accesses": [
            "query",
            str(trace),
            "SELECT count(*) FROM accesses WHERE access = 'write'",
        ],
        "serve": ["serve", "--port", "0", str(trace)],
    }


def measure(command: list[str], cwd: Path) -> dict[str, float]:
    """Run `command` to its end; its peak RSS (MiB), CPU seconds and wall seconds."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    assert child.stderr is not None
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"{shlex.join(command)} failed: {child.stderr.read().decode()}")
    child.stderr.close()
    return {
        "rss": usage.ru_maxrss / 1024,
        "cpu": usage.ru_utime + usage.ru_stime,
        "wall": wall,
    }


def measure_serve(command: list[str], cwd: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Start `serve`, fetch its page and the page's first window: the time to that first
    page, the process's peak RSS and CPU seconds then; then what the page fetches once
    the server has read every step (`api/overview`, where the server has it, and the
    first window again, now with its backtraces), and the same three at the end."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    assert child.stderr is not None
    line = child.stderr.readline().decode()
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if found is None:
        child.kill()
        raise SystemExit(f"{shlex.join(command)}: no address in {line!r}")
    url = f"http://127.0.0.1:{found.group(1)}/"
    with urllib.request.urlopen(url) as page:
        page.read()
    with urllib.request.urlopen(url + "api/window?step=0") as window:
        window.read()
    first_page = time.perf_counter() - start
    at_first_page = {"rss": _peak_rss_of(child.pid), "cpu": _cpu_of(child.pid), "wall": first_page}
    try:
        with urllib.request.urlopen(url + "api/overview") as overview:
            overview.read()
        with urllib.request.urlopen(url + "api/window?step=0") as window:
            window.read()
    except urllib.error.HTTPError as error:
        if error.code != 404:  # 404: an install whose page holds everything already
            raise
    whole = time.perf_counter() - start
    child.send_signal(signal.SIGINT)
    _, _, usage = os.wait4(child.pid, 0)
    child.stderr.close()
    return at_first_page, {
        "rss": usage.ru_maxrss / 1024,
        "cpu": usage.ru_utime + usage.ru_stime,
        "wall": whole,
    }


def _peak_rss_of(pid: int) -> float:
    """A running process's peak RSS in MiB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_of(pid: int) -> float:
    """A running process's CPU seconds so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compare_commands(
    trace: Path, baseline: list[str], steps: int | None, only: list[str] | None = None
) -> None:
    """Every reading command, with `baseline` and with this checkout, one after the other."""
    import pyarrow.parquet as pq

    rows = steps or pq.ParquetFile(trace).metadata.num_rows
    here = [sys.executable, "-m", "stacktrace_lab"]
    env_note = f"baseline: {shlex.join(baseline)}\nthis checkout: {shlex.join(here)}"
    print(f"{trace}: {rows:,} steps\n{env_note}")
    print(
        f"{'command':<15} {'base MiB':>9} {'this MiB':>9} {'base CPU s':>11} {'this CPU s':>11}"
        f" {'base wall s':>12} {'this wall s':>12}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-commands-") as tmp:
        trace = trace.resolve()
        runs = (baseline, here)
        for name, arguments in reading_commands(trace, Path(tmp), rows).items():
            if only and name.split()[0] not in only:
                continue
            if name == "serve":
                # Not from the checkout: `python -m` would import the package from there.
                served = [measure_serve([*prefix, *arguments], Path(tmp)) for prefix in runs]
                lines = {
                    "serve": (served[0][0], served[1][0]),
                    "serve, all": (served[0][1], served[1][1]),
                }
            else:
                pair = [measure([*prefix, *arguments], Path(tmp)) for prefix in runs]
                lines = {name: (pair[0], pair[1])}
            for label, (base, this) in lines.items():
                print(
                    f"{label:<15} {base['rss']:>9.0f} {this['rss']:>9.0f} {base['cpu']:>11.2f} "
                    f"{this['cpu']:>11.2f} {base['wall']:>12.2f} {this['wall']:>12.2f}",
                    flush=True,
                )
    print(
        "serve: to its first page and first window (peak RSS and CPU then); serve, all: "
        "then the chart, switches and backtraces the page fetches (api/overview)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--trace", type=Path, help="use this trace instead of recording one")
    parser.add_argument(
        "--commands", action="store_true", help="time every reading command (needs --trace)"
    )
    parser.add_argument(
        "--baseline",
        default="stacktrace-lab",
        help="how to run the install to compare with, as a shell command line",
    )
    parser.add_argument(
        "--only", action="append", help="with --commands: only this command (repeatable)"
    )
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.commands:
        if args.trace is None:
            parser.error("--commands needs --trace")
        compare_commands(args.trace, shlex.split(args.baseline), None, args.only)
        return
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
