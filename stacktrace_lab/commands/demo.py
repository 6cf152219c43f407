"""`stacktrace-lab demo [--rust]`: record the seed scenario (or the tutorial's own Rust
program, built on the spot) and report it, in one command."""

from __future__ import annotations

from pathlib import Path

import click

from ..record.recorder import Recording, record
from ..report.build import build_report
from ..scenario import load_scenario
from ..trace.reader import load_trace
from .report import print_written

DEMO_SCENARIO = "first-switch"
#: The Rust demo: examples/first_switch.rs, rustc -O -g with +crt-static (a static-pie).
RUST_BUILD = "rust-static-pie"
RUST_NAME = "first-switch-rust"
#: Where the demo writes its traces (and, with --rust, the program it built, next to
#: its trace so that `replay` finds it).
TRACE_DIR = Path("traces")


@click.command("demo")
@click.option(
    "--rust",
    is_flag=True,
    help="Build examples/first_switch.rs with rustc and record the real program instead.",
)
def demo_command(rust: bool) -> int:
    """Record first-switch into traces/ and write its report into reports/first-switch/
    (with --rust: the tutorial's Rust program, into first-switch-rust)."""
    if rust:
        recording = _record_rust()
        name = RUST_NAME
    else:
        scenario = load_scenario(DEMO_SCENARIO)
        recording = record(scenario, TRACE_DIR / f"{scenario.name}.parquet")
        name = scenario.name
    meta = recording.metadata
    click.echo(f"recorded {recording.path}: {meta.steps} steps, stopped: {meta.stop.reason}")
    report = build_report(load_trace(recording.path), Path("reports") / name)
    print_written(report)
    click.echo(f"open {report.directory / 'index.html'} in a browser")
    return report.check.exit_status


def _record_rust() -> Recording:
    from ..examples import build_example
    from ..record.elf_front import record_elf

    # Built next to its trace, which names it: `replay` reads the program again.
    program = build_example(RUST_BUILD, TRACE_DIR)
    click.echo(f"built {program} with rustc")
    # Recording from main: the start-up of Rust's std (36,000 steps) is
    # not what the example is about.
    return record_elf(
        program, TRACE_DIR / f"{RUST_NAME}.parquet", from_symbol="main", name=RUST_NAME
    )
