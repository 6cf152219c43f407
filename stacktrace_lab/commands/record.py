"""`stacktrace-lab record [SCENARIO | PROGRAM] [-o FILE] [--from SYM] [--to SYM] [-- ARGS]`."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import BadInput
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


def is_program(argument: str) -> bool:
    """A path to an existing file that is not a scenario: a program to record."""
    path = Path(argument)
    return not argument.endswith(".toml") and path.is_file()


@click.command("record")
@click.argument("scenario", default="first-switch")
@click.argument("args", nargs=-1)
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
@click.option(
    "--from",
    "from_symbol",
    metavar="SYMBOL",
    help="For a program: run the start-up unrecorded, record from SYMBOL (e.g. main).",
)
@click.option("--to", "to_symbol", metavar="SYMBOL", help="For a program: stop at SYMBOL.")
def record_command(
    scenario: str,
    args: tuple[str, ...],
    output: Path | None,
    max_steps: int | None,
    snapshot_limit: int,
    from_symbol: str | None,
    to_symbol: str | None,
    max_output: int,
    max_trace_size: int,
    max_program_size: int,
    max_source_size: int,
    allow_outside: bool,
) -> int:
    """Record SCENARIO (a built-in name or a .toml file), or a static x86-64 PROGRAM
    (give its arguments after --), into a trace."""
    if is_program(scenario):
        return _record_program(
            Path(scenario), list(args), output, max_steps, snapshot_limit, from_symbol, to_symbol
        )
    if args or from_symbol or to_symbol:
        raise BadInput(f"{scenario}: program arguments, --from and --to are for programs")
    if scenario.endswith(".toml") and Path(scenario).is_file():
        from ..record.elf_scenario import is_elf_scenario

        if is_elf_scenario(scenario):
            return _record_elf_scenario(Path(scenario), output, max_steps, snapshot_limit)
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


def _record_program(
    program: Path,
    args: list[str],
    output: Path | None,
    max_steps: int | None,
    snapshot_limit: int,
    from_symbol: str | None,
    to_symbol: str | None,
) -> int:
    from ..record.elf_front import DEFAULT_ELF_MAX_STEPS, record_elf

    options = RecordOptions(max_steps=max_steps, snapshot_limit=snapshot_limit)
    target = output or default_trace_path(program.name)
    total = max_steps or DEFAULT_ELF_MAX_STEPS
    with step_progress(total, f"recording {program.name}") as bar:
        recording = record_elf(program, target, options, args, from_symbol, to_symbol, bar)
    meta = recording.metadata
    click.echo(
        f"{recording.path}: {meta.steps} steps, stopped: {meta.stop.reason} ({meta.stop.detail})"
    )
    return 0


def _record_elf_scenario(
    path: Path, output: Path | None, max_steps: int | None, snapshot_limit: int
) -> int:
    """A scenario file whose `[program]` is `elf = "prog"`."""
    from ..record.elf_scenario import describe_elf_scenario
    from ..record.recorder import record_description

    options = RecordOptions(max_steps=max_steps, snapshot_limit=snapshot_limit)
    description = describe_elf_scenario(path, max_steps)
    target = output or default_trace_path(description.info.name)
    with step_progress(description.max_steps, f"recording {description.info.name}") as bar:
        recording = record_description(description, target, options, progress=bar)
    meta = recording.metadata
    click.echo(
        f"{recording.path}: {meta.steps} steps, stopped: {meta.stop.reason} ({meta.stop.detail})"
    )
    return 0
