"""How long `diff` takes on two long traces, and how much memory: run by hand.

    python benchmarks/bench_diff.py                 # ~1,000,000 steps per trace
    python benchmarks/bench_diff.py --steps 5000000 # scale the loop count

Records diff-call-loop.toml (A) and diff-call-loop-changed.toml (B: one
immediate changed, about 6 steps before the end), plus a variant of A with a
`nop` inserted before the loop (every later row shifts by one). Then each case
runs `diff_traces` + the text renderer in a child process of its own, so peak
RSS (ru_maxrss) is that diff's alone; the RSS of the imports alone is printed
for reference. The machines are shared: rerun and compare rows of one run.

Cases:
- steps: A vs B, row N against row N (row groups whose compressed bytes are
  identical in both files are skipped without decoding);
- steps, all decoded: the same with that shortcut off, i.e. the vectorized
  column comparison over every row;
- align: A vs B in align mode;
- align, shifted: A vs the nop variant in align mode: every row is paired
  one off, so nothing is skipped and code addresses are translated.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIO_A = HERE / "diff-call-loop.toml"
SCENARIO_B = HERE / "diff-call-loop-changed.toml"
STEPS_PER_ROUND = 32
DEFAULT_ROUNDS = 31250


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(case: str, a: str, b: str) -> None:
    from stacktrace_lab.diff import compare, diff_traces, render

    imported_mb = _peak_mb()
    if case == "steps-decoded":
        compare._unchanged = lambda *args: False  # type: ignore[assignment]
    start = time.perf_counter()
    diff = diff_traces(a, b, align=case.startswith("align"))
    text = render(diff, "text")
    seconds = time.perf_counter() - start
    d = diff.first_divergence
    where = f"{d.kind} at A {d.a.step if d.a else '-'} / B {d.b.step if d.b else '-'}" if d else "-"
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mb": _peak_mb(),
                "imports_mb": imported_mb,
                "same": diff.same,
                "first": where,
                "columns": {c.column: c.steps for c in diff.columns},
                "text_lines": text.count("\n"),
            }
        )
    )


def scaled(source: Path, rounds: int, out: Path, insert_nop: bool = False) -> Path:
    text = source.read_text()
    text = re.sub(r"mov \$\d+, %ecx", f"mov ${rounds}, %ecx", text)
    text = re.sub(r"max_steps = \d+", f"max_steps = {rounds * STEPS_PER_ROUND * 2 + 1000}", text)
    if insert_nop:
        text = text.replace("    mov $0, %ebx\n", "    mov $0, %ebx\n    nop\n", 1)
    out.write_text(text)
    return out


def record(scenario: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "stacktrace_lab", "record", str(scenario), "-o", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_ROUNDS * STEPS_PER_ROUND)
    parser.add_argument("--child", nargs=3, metavar=("CASE", "A", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    rounds = max(args.steps // STEPS_PER_ROUND, 1)
    with tempfile.TemporaryDirectory(prefix="bench-diff-") as tmp:
        work = Path(tmp)
        traces = {}
        for name, source, nop in (
            ("a", SCENARIO_A, False),
            ("b", SCENARIO_B, False),
            ("nop", SCENARIO_A, True),
        ):
            scenario = scaled(source, rounds, work / f"{name}.toml", insert_nop=nop)
            traces[name] = work / f"{name}.parquet"
            seconds = record(scenario, traces[name])
            size = traces[name].stat().st_size / 1e6
            print(f"recorded {name}: {seconds:.1f} s, {size:.1f} MB file")

        from stacktrace_lab.trace import load_trace

        rows = {name: load_trace(path).num_rows for name, path in traces.items()}
        print(f"steps per trace: A {rows['a']:,}, B {rows['b']:,}, nop variant {rows['nop']:,}")
        print(
            f"{'case':<18} {'seconds':>8} {'peak RSS MB':>12} {'imports MB':>11}  first divergence"
        )
        cases = [
            ("steps", "a", "b"),
            ("steps-decoded", "a", "b"),
            ("align", "a", "b"),
            ("align-shifted", "a", "nop"),
        ]
        for case, a, b in cases:
            out = subprocess.run(
                [sys.executable, __file__, "--child", case, str(traces[a]), str(traces[b])],
                check=True,
                capture_output=True,
                text=True,
            )
            r = json.loads(out.stdout)
            print(
                f"{case:<18} {r['seconds']:>8.2f} {r['peak_mb']:>12.0f} {r['imports_mb']:>11.0f}"
                f"  {r['first']}; columns {r['columns']}"
            )


if __name__ == "__main__":
    main()
