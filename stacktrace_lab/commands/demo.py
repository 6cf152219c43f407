"""`stacktrace-lab demo [--rust | --example NAME]`: record the seed scenario (or the
tutorial's own Rust program, or another committed example, built on the spot) and
report it, in one command. `demo --example NAME` regenerates reports/NAME/."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..config import load_config
from ..errors import BadInput
from .report import print_written

if TYPE_CHECKING:  # the recorder and the report: imported when the command runs
    from ..record.recorder import Recording

DEMO_SCENARIO = "first-switch"
#: The Rust demo (examples.EXAMPLE_REPORTS): examples/first_switch.rs as a new user
#: builds it, plain `rustc -g`: dynamically linked against the host's libc (issue 21).
RUST_NAME = "first-switch-rust"


@click.command("demo")
@click.option(
    "--rust",
    is_flag=True,
    help="Build examples/first_switch.rs with rustc and record the real program instead.",
)
@click.option(
    "--example",
    "example",
    metavar="NAME",
    default=None,
    help="Build, record and report a committed example program into reports/NAME/: "
    "first-switch-rust (= --rust), first-switch-c-dynamic, three-coroutines.",
)
def demo_command(rust: bool, example: str | None) -> int:
    """Record first-switch into stacktrace-lab-traces/ and write its report into
    reports/first-switch/ (with --rust: the tutorial's Rust program, into first-switch-rust;
    with --example NAME: that example program, into reports/NAME/)."""
    from ..record.recorder import record
    from ..report.build import build_report
    from ..scenario import load_scenario
    from ..trace.reader import load_trace

    config = load_config()

    if rust and example not in (None, RUST_NAME):
        raise BadInput(f"demo: --rust is --example {RUST_NAME}; give one of them")
    if rust or example is not None:
        name = example or RUST_NAME
        recording = _record_example(name, config.record_dir)
    else:
        scenario = load_scenario(DEMO_SCENARIO)
        recording = record(scenario, config.record_dir / f"{scenario.name}.parquet")
        name = scenario.name
    meta = recording.metadata
    click.echo(f"recorded {recording.path}: {meta.steps} steps, stopped: {meta.stop.reason}")
    if any(f.get("kind") is None for f in meta.options.get("files") or []):
        click.echo(_pinned_libraries(meta.options["files"]))
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


def _record_example(name: str, record_dir: Path) -> Recording:
    """The example program `name` built into `record_dir` (the `record` command's folder,
    not the goldens'), next to its trace, which names it: `replay` reads the program
    again. Recorded from `main`: the start-up of the C library or Rust's std (36,000
    steps for Rust, 156,000 with the loader) is not what the examples are about."""
    from ..examples import BUILDS, EXAMPLE_REPORTS, build_example
    from ..record.linux.elf_front import record_elf

    example = EXAMPLE_REPORTS.get(name)
    if example is None:
        known = ", ".join(EXAMPLE_REPORTS)
        raise BadInput(f"demo: no example {name!r} (the examples are {known})")
    program = build_example(example.build, record_dir)
    click.echo(f"built {program} with {BUILDS[example.build][0]}: {example.what}")
    return record_elf(program, record_dir / f"{name}.parquet", from_symbol="main", name=name)
