"""`stacktrace-lab demo [--rust]`: record the seed scenario (or the tutorial's own Rust
program, built on the spot) and report it, in one command."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..config import load_config
from .report import print_written

if TYPE_CHECKING:  # the recorder and the report: imported when the command runs
    from ..record.recorder import Recording

DEMO_SCENARIO = "first-switch"
#: The Rust demo: examples/first_switch.rs as a new user builds it, plain `rustc -g`:
#: dynamically linked against the host's libc (issue 21).
RUST_BUILD = "rust-dynamic"
RUST_NAME = "first-switch-rust"


@click.command("demo")
@click.option(
    "--rust",
    is_flag=True,
    help="Build examples/first_switch.rs with rustc and record the real program instead.",
)
def demo_command(rust: bool) -> int:
    """Record first-switch into stacktrace-lab-traces/ and write its report into
    reports/first-switch/ (with --rust: the tutorial's Rust program, into first-switch-rust)."""
    from ..record.recorder import record
    from ..report.build import build_report
    from ..scenario import load_scenario
    from ..trace.reader import load_trace

    config = load_config()

    if rust:
        recording = _record_rust(config.record_dir)
        name = RUST_NAME
    else:
        scenario = load_scenario(DEMO_SCENARIO)
        recording = record(scenario, config.record_dir / f"{scenario.name}.parquet")
        name = scenario.name
    meta = recording.metadata
    click.echo(f"recorded {recording.path}: {meta.steps} steps, stopped: {meta.stop.reason}")
    if rust:
        click.echo(_pinned_libraries(meta.options.get("files") or []))
    report = build_report(load_trace(recording.path), config.reports_dir / name)
    print_written(report)
    click.echo(f"open {report.directory / 'index.html'} in a browser")
    return report.check.exit_status


def _pinned_libraries(files: list[dict[str, object]]) -> str:
    """What a dynamically linked program's trace depends on, said once."""
    names = ", ".join(Path(str(f.get("path"))).name for f in files if f.get("kind") is None)
    return (
        f"the trace pins this machine's libraries by sha256 ({names}): `replay` works "
        "here, and on a machine whose libraries differ it refuses, naming the file"
    )


def _record_rust(record_dir: Path) -> Recording:
    """The Rust example built into `record_dir` (the `record` command's folder, not the
    goldens'), next to its trace, which names it: `replay` reads the program again."""
    from ..examples import build_example
    from ..record.elf_front import record_elf

    program = build_example(RUST_BUILD, record_dir)
    click.echo(f"built {program} with rustc -g (dynamically linked)")
    # Recording from main: the loader, libc's and Rust's std start-up
    # (156,000 steps) are not what the example is about.
    return record_elf(
        program, record_dir / f"{RUST_NAME}.parquet", from_symbol="main", name=RUST_NAME
    )
