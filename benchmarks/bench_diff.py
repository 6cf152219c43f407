"""How long `diff` takes on two long traces, and how much memory: run by hand.

    python benchmarks/bench_diff.py                 # ~1,000,000 steps per trace
    python benchmarks/bench_diff.py --steps 5000000 # scale the loop count
    python benchmarks/bench_diff.py --steps 300000 --before main   # before/after, side by side
    python benchmarks/bench_diff.py --steps 300000 --before main --whole   # + difflib unwindowed

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
  one off, so nothing is skipped and code addresses are translated;
- align, loop: A vs a variant with a `nop` inside `inner`, the function the
  loop calls twice a round: every iteration has an inserted step, so the
  alignment has one gap per call (the case difflib took 109 s on at 300k steps).

With `--before REF`, the align cases also run on the tree of git ref REF
(unpacked with `git archive`, run with PYTHONPATH pointing at it) in the same
run, so the rows compare like with like. The "before" of this change is
difflib.SequenceMatcher over the divergent region, limited to 4000 rows per
side (past that, "window-limited": the rest is left unaligned); `--whole`
adds the loop case with that window lifted, i.e. difflib over all the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIO_A = HERE / "diff-call-loop.toml"
SCENARIO_B = HERE / "diff-call-loop-changed.toml"
STEPS_PER_ROUND = 32
DEFAULT_ROUNDS = 31250


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(case: str, a: str, b: str) -> None:
    # pyarrow imports pandas at its first to_numpy(); older trees imported it at
    # module level. Import it here, outside the timing, so every tree pays it alike.
    import pandas  # noqa: F401

    from stacktrace_lab.diff import compare, diff_traces, render

    imported_mb = _peak_mb()
    if case == "steps-decoded":
        compare._unchanged = lambda *args: False  # type: ignore[assignment]
    if case == "align-loop-whole":
        # The before tree (difflib) with its window lifted: aligns all rows, as asked.
        from stacktrace_lab.diff import align

        align.align_traces.__defaults__ = (10**9,)
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
                "alignment": (
                    f"{diff.alignment.matched} paired, {diff.alignment.total_gaps} gaps"
                    + (", window-limited" if diff.alignment.window_limited else "")
                    if diff.alignment
                    else "-"
                ),
            }
        )
    )


def scaled(source: Path, rounds: int, out: Path, insert_nop: str = "") -> Path:
    """The scenario with `rounds` rounds, and a `nop` after the line `insert_nop` if given."""
    text = source.read_text()
    text = re.sub(r"mov \$\d+, %ecx", f"mov ${rounds}, %ecx", text)
    text = re.sub(r"max_steps = \d+", f"max_steps = {rounds * STEPS_PER_ROUND * 2 + 1000}", text)
    if insert_nop:
        assert insert_nop in text
        text = text.replace(insert_nop, insert_nop + "    nop\n", 1)
    out.write_text(text)
    return out


def unpack(ref: str, into: Path) -> Path:
    """The package as it is at git ref `ref`, for the "before" column."""
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", ref, "stacktrace_lab"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


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
    parser.add_argument("--before", metavar="REF", help="also run the align cases on this ref")
    parser.add_argument(
        "--whole",
        action="store_true",
        help="with --before: also align the loop case on REF with its window lifted (slow)",
    )
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
            ("a", SCENARIO_A, ""),
            ("b", SCENARIO_B, ""),
            ("nop", SCENARIO_A, "    mov $0, %ebx\n"),
            ("loop", SCENARIO_A, "inner:\n    push %rbx\n"),
        ):
            scenario = scaled(source, rounds, work / f"{name}.toml", insert_nop=nop)
            traces[name] = work / f"{name}.parquet"
            seconds = record(scenario, traces[name])
            size = traces[name].stat().st_size / 1e6
            print(f"recorded {name}: {seconds:.1f} s, {size:.1f} MB file")

        from stacktrace_lab.trace import load_trace

        rows = {name: load_trace(path).num_rows for name, path in traces.items()}
        print(
            f"steps per trace: A {rows['a']:,}, B {rows['b']:,}, nop variant {rows['nop']:,}, "
            f"loop variant {rows['loop']:,}"
        )
        print(
            f"{'case':<25} {'seconds':>8} {'peak RSS MB':>12} {'imports MB':>11}  first divergence"
        )
        cases = [
            ("steps", "a", "b", None),
            ("steps-decoded", "a", "b", None),
            ("align", "a", "b", None),
            ("align-shifted", "a", "nop", None),
            ("align-loop", "a", "loop", None),
        ]
        if args.before:
            before = unpack(args.before, work / "before")
            cases += [
                (f"{case} ({args.before})", a, b, before)
                for case, a, b, _ in cases
                if case.startswith("align")
            ]
            if args.whole:
                cases.append((f"align-loop-whole ({args.before})", "a", "loop", before))
        for case, a, b, tree in cases:
            env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
            mode = case.split()[0]
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(traces[a]), str(traces[b])],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            )
            r = json.loads(out.stdout)
            columns = r["columns"] if len(r["columns"]) < 4 else f"{len(r['columns'])} columns"
            print(
                f"{case:<25} {r['seconds']:>8.2f} {r['peak_mb']:>12.0f} {r['imports_mb']:>11.0f}"
                f"  {r['first']}; {r['alignment']}; differing {columns}"
            )


if __name__ == "__main__":
    main()
