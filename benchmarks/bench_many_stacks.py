"""Does reading a trace cost more per step with more stacks? `check`, `report` and
`query` on the same program with few and with many stacks, at the same length.

    python benchmarks/bench_many_stacks.py                        # 16 and 1,024 stacks
    python benchmarks/bench_many_stacks.py --stacks 16 --stacks 1024 --steps 1300000

For each stack count it writes `benchmarks/many_stacks.py`'s C program (N
`malloc`'d stacks of 256 bytes, visited round-robin: `main` moves rsp to the
next stack, calls a function there that calls another, and comes back), builds
it with `gcc -static -O1`, records `--steps` steps from `main` with
`--snapshot-limit 8`, then runs each reading command in a process of its own
and prints its peak RSS and CPU seconds (user + system, from `wait4`).
Linear analysis means the columns for 1,024 stacks stay close to those for 16
(the number of stack switches per step is the same); a pass per stack would
multiply them. Files go to a scratch directory (or `--keep DIR`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_analysis import measure  # noqa: E402
from many_stacks import program  # noqa: E402


def commands(trace: Path, out: Path) -> dict[str, list[str]]:
    return {
        "check": ["check", str(trace)],
        "report": ["report", str(trace), "-o", str(out / "report")],
        "query": ["query", str(trace), "SELECT stack, count(*) FROM steps GROUP BY stack"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, action="append", help="repeatable")
    parser.add_argument("--steps", type=int, default=1_300_000)
    parser.add_argument("--keep", type=Path, help="keep the programs and traces here")
    args = parser.parse_args()
    counts = args.stacks or [16, 1024]
    here = [sys.executable, "-m", "stacktrace_lab"]
    with tempfile.TemporaryDirectory(prefix="bench-stacks-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"{'stacks':>6} {'command':<8} {'steps':>10} {'peak MiB':>9} {'CPU s':>7}")
        for n in counts:
            source, binary = work / f"many{n}.c", work / f"many{n}"
            trace = work / f"many{n}.parquet"
            source.write_text(program(n))
            subprocess.run(["gcc", "-static", "-O1", str(source), "-o", str(binary)], check=True)
            record = [
                *here, "record", str(binary), "--from", "main", "--snapshot-limit", "8",
                "--max-steps", str(args.steps), "-o", str(trace),
            ]  # fmt: skip
            took = measure(record, work)
            print(
                f"{n:>6} {'record':<8} {args.steps:>10,} {took['rss']:>9.0f} {took['cpu']:>7.2f}",
                flush=True,
            )
            for name, arguments in commands(trace, work).items():
                took = measure([*here, *arguments], work)
                print(
                    f"{n:>6} {name:<8} {args.steps:>10,} {took['rss']:>9.0f} {took['cpu']:>7.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
