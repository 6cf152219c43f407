"""`stacktrace-lab record [SCENARIO] [-o FILE]`."""

from __future__ import annotations

from pathlib import Path

import click

from ..limits import DEFAULT_LIMITS, Limits
from ..record.recorder import RecordOptions, record
from ..scenario import load_scenario
from ..trace.format import DEFAULT_SNAPSHOT_LIMIT
from .common import step_progress

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ByteSize(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2
    """A number of bytes: `4096`, `64K`, `16M`, `2G` (powers of 1024)."""

    name = "size"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        unit = text[-1:] if text[-1:] in _UNITS else ""
        try:
            return int(text[: len(text) - len(unit)]) * _UNITS[unit]
        except ValueError:
            self.fail(f"{value!r} is not a size (bytes, or with K, M, G)", param, ctx)


BYTE_SIZE = ByteSize()


def default_trace_path(name: str) -> Path:
    return Path("traces") / f"{name}.parquet"


@click.command("record")
@click.argument("scenario", default="first-switch")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trace file to write [default: traces/<name>.parquet].",
)
@click.option("--max-steps", type=int, help="Stop after this many steps [default: the scenario's].")
@click.option(
    "--snapshot-limit",
    type=int,
    default=DEFAULT_SNAPSHOT_LIMIT,
    show_default=True,
    help="Bytes of each stack (its top) stored per step.",
)
@click.option(
    "--max-output",
    type=BYTE_SIZE,
    default=DEFAULT_LIMITS.max_output_bytes,
    show_default=True,
    help="Bytes of stdout and of stderr kept in the trace (the rest is counted).",
)
@click.option(
    "--max-trace-size",
    type=BYTE_SIZE,
    default=DEFAULT_LIMITS.max_trace_bytes,
    show_default=True,
    help="Stop the run (reason: limit) once the trace file is this large.",
)
@click.option(
    "--max-program-size",
    type=BYTE_SIZE,
    default=DEFAULT_LIMITS.max_program_bytes,
    show_default=True,
    help="Largest assembled program, checked before assembling.",
)
@click.option(
    "--max-source-size",
    type=BYTE_SIZE,
    default=DEFAULT_LIMITS.max_source_bytes,
    show_default=True,
    help="Largest scenario file and program file.",
)
@click.option(
    "--allow-outside",
    is_flag=True,
    help="Let [program] file and .incbin name files outside the scenario's directory.",
)
def record_command(
    scenario: str,
    output: Path | None,
    max_steps: int | None,
    snapshot_limit: int,
    max_output: int,
    max_trace_size: int,
    max_program_size: int,
    max_source_size: int,
    allow_outside: bool,
) -> int:
    """Record SCENARIO (a built-in name or a .toml file) into a trace."""
    limits = Limits(
        max_source_bytes=max_source_size,
        max_program_bytes=max_program_size,
        max_output_bytes=max_output,
        max_trace_bytes=max_trace_size,
    )
    loaded = load_scenario(scenario, limits, allow_outside)
    options = RecordOptions(max_steps=max_steps, snapshot_limit=snapshot_limit, limits=limits)
    target = output or default_trace_path(loaded.name)
    with step_progress(options.max_steps or loaded.max_steps, f"recording {loaded.name}") as bar:
        recording = record(loaded, target, options, progress=bar)
    meta = recording.metadata
    click.echo(
        f"{recording.path}: {meta.steps} steps, stopped: {meta.stop.reason} ({meta.stop.detail})"
    )
    return 0
