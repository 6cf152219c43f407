"""`stacktrace-lab record [SCENARIO | PROGRAM] [-o FILE|-] [--from SYM] [--to SYM] [-- ARGS]`.

Defaults come from `[tool.stacktrace-lab]` (stacktrace_lab.config): the
output directory (record-dir, `stacktrace-lab-traces/`: never the goldens'
traces-dir, which the pytest plugin owns), --max-steps and --snapshot-limit.

Files that matter are safe:
- `-o -` writes the trace to stdout (for a pipe or a redirection; refused in
  one line when stdout is a terminal); the summary then goes to stderr;
- a trace written with `-o` inside the goldens directory (traces-dir) is never silently
  replaced by a different one: the new recording goes to a hidden file next
  to the target first, and if it differs from the file there, the command
  refuses in one line (exit 2) unless --force. A byte-identical re-record is
  fine (the file is left untouched). `pytest --stacktrace-lab-update` is the
  deliberate way.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import safe_output
from ..config import load_config
from ..errors import BadInput
from ..limits import DEFAULT_LIMITS, Limits
from .progress import step_progress

if TYPE_CHECKING:  # the recorder loads unicorn and pyarrow: imported when the command runs
    from ..record.recorder import Recording, RecordOptions
    from ..scenario import Scenario

STDOUT = Path("-")

#: Records into the path it is given (a scenario, a program, an ELF scenario).
Recorder = Callable[[Path], "Recording"]

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
    return load_config().record_dir / f"{name}.parquet"


def is_program(argument: str) -> bool:
    """A path to an existing file that is not a scenario: a program to record."""
    path = Path(argument)
    return not argument.endswith(".toml") and path.is_file()


#: futex is emulated but for some operations (docs/machine.md): say which.
FUTEX_NOT_EMULATED = (
    " (an operation other than wait, wake, requeue, wake_op and the PI locks: "
    "FUTEX_WAIT_REQUEUE_PI, FUTEX_CMP_REQUEUE_PI or an unknown one)"
)


@click.command("record")
@click.argument("scenario", default="first-switch")
@click.argument("args", nargs=-1)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    help="Trace file to write, or - for stdout [default: <record-dir>/<name>.parquet, "
    "record-dir from [tool.stacktrace-lab], else stacktrace-lab-traces].",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    help="Stop after this many steps [default: the scenario's].",
)
@click.option(
    "--thread-slice",
    type=click.IntRange(min=1),
    help="Instructions a thread runs before the next runnable one gets the CPU "
    "(a threaded program's fixed schedule) [default: 10000].",
)
@click.option(
    "--snapshot-limit",
    type=int,
    help="Bytes of each stack (its top) stored per step [default: 512].",
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
    help="Let [program] file(s) and .incbin name files outside the scenario's directory.",
)
@click.option(
    "--from",
    "from_symbol",
    metavar="SYMBOL",
    help="For a program: run the start-up unrecorded, record from SYMBOL (e.g. main).",
)
@click.option("--to", "to_symbol", metavar="SYMBOL", help="For a program: stop at SYMBOL.")
@click.option(
    "--allow-read",
    "allow_read",
    multiple=True,
    metavar="PATH",
    help="For a program: let it read PATH (a file or directory) too; it never writes.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace a golden trace (in traces-dir) even if the new trace differs from it.",
)
@click.option(
    "--report",
    "with_report",
    is_flag=True,
    help="Also write the report (as `report`); exit 1 if an invariant fails.",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where --report writes [default: <reports-dir>/<name>/].",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def record_command(
    scenario: str,
    args: tuple[str, ...],
    output: Path | None,
    max_steps: int | None,
    thread_slice: int | None,
    snapshot_limit: int | None,
    from_symbol: str | None,
    to_symbol: str | None,
    force: bool,
    with_report: bool,
    report_dir: Path | None,
    as_json: bool,
    max_output: int,
    max_trace_size: int,
    max_program_size: int,
    max_source_size: int,
    allow_outside: bool,
    allow_read: tuple[str, ...],
) -> int:
    """Record SCENARIO (a built-in name or a .toml file), or an x86-64 Linux PROGRAM,
    static or dynamically linked (give its arguments after --), into a trace."""
    from ..record.recorder import RecordOptions

    config = load_config()
    limits = Limits(
        max_source_bytes=max_source_size,
        max_program_bytes=max_program_size,
        max_output_bytes=max_output,
        max_trace_bytes=max_trace_size,
    )
    settings: dict[str, Any] = {"max_steps": max_steps or config.max_steps, "limits": limits}
    if snapshot_limit or config.snapshot_limit:
        settings["snapshot_limit"] = snapshot_limit or config.snapshot_limit
    if thread_slice:
        settings["thread_slice"] = thread_slice
    options = RecordOptions(**settings)
    to_stdout = output == STDOUT
    if to_stdout and sys.stdout.isatty():
        raise BadInput("-o -: stdout is a terminal; redirect it to a file or a pipe")
    safe_output.refuse_dash_folder("--report-dir", report_dir)
    if to_stdout and with_report:
        raise BadInput("-o - cannot be combined with --report (the report needs the file)")

    name, recorder = _recorder(
        scenario, list(args), options, from_symbol, to_symbol, allow_outside, allow_read
    )
    if to_stdout:
        with tempfile.TemporaryDirectory() as scratch:
            fresh = Path(scratch) / f"{name}.parquet"
            recording = recorder(fresh)
            with fresh.open("rb") as trace:
                shutil.copyfileobj(trace, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        written = "-"
    else:
        target = default_trace_path(name) if output is None else output
        recording = record_safely(recorder, target, force)
        written = str(target)

    meta = recording.metadata
    summary: dict[str, Any] = {
        "trace": written,
        "scenario": meta.scenario.name,
        "steps": meta.steps,
        "stop": {"reason": meta.stop.reason, "step": meta.stop.step, "detail": meta.stop.detail},
    }
    # Calls the machine does not emulate change what the program does: never silently.
    not_emulated = {name: n[1] for name, n in meta.syscall_counts.items() if n[1]}
    if not_emulated:
        summary["enosys"] = not_emulated
    if meta.thread_slice is not None:  # a threaded program: how many, under which slice
        summary["threads"] = {"count": len(meta.threads), "slice": meta.thread_slice}
    status = 0
    if with_report:
        from ..report.build import build_report
        from ..trace.reader import load_trace
        from .report import report_summary

        report = build_report(load_trace(Path(written)), report_dir or config.reports_dir / name)
        summary["report"] = report_summary(report)
        status = report.check.exit_status

    echo = _stderr_echo if to_stdout else click.echo
    if as_json:
        echo(json.dumps(summary, indent=2, sort_keys=True))
    else:
        made = (
            f", {len(meta.threads)} threads (a slice of {meta.thread_slice:,} instructions)"
            if meta.thread_slice is not None
            else ""
        )
        echo(
            f"{written}: {meta.steps} steps{made}, stopped: {meta.stop.reason} ({meta.stop.detail})"
        )
        if not_emulated:
            calls = ", ".join(
                f"{name} x{n}{FUTEX_NOT_EMULATED if name == 'futex' else ''}"
                for name, n in not_emulated.items()
            )
            _stderr_echo(
                f"warning: system calls the machine does not emulate were answered -ENOSYS: {calls}"
            )
        if with_report:
            from .report import print_written

            print_written(report)
    return status


def _recorder(
    scenario: str,
    args: list[str],
    options: RecordOptions,
    from_symbol: str | None,
    to_symbol: str | None,
    allow_outside: bool = False,
    allow_read: tuple[str, ...] = (),
) -> tuple[str, Recorder]:
    """The trace's name and how to record it: a program, an ELF scenario or a scenario."""
    if (args or from_symbol or to_symbol or allow_read) and not Path(scenario).exists():
        raise BadInput(f"{scenario}: no such file")
    if is_program(scenario):
        from ..record.linux.elf_front import DEFAULT_ELF_MAX_STEPS, record_elf

        _refuse_what_is_no_program(Path(scenario))
        program = Path(scenario)
        total = options.max_steps or DEFAULT_ELF_MAX_STEPS

        def record_program(path: Path) -> Recording:
            with step_progress(total, f"recording {program.name}") as bar:
                return record_elf(
                    program,
                    path,
                    options,
                    args,
                    from_symbol,
                    to_symbol,
                    bar,
                    allow_read=allow_read,
                )

        return program.name, record_program
    if args or from_symbol or to_symbol or allow_read:
        raise BadInput(
            f"{scenario}: program arguments, --from, --to and --allow-read are for programs"
        )
    if scenario.endswith(".toml") and Path(scenario).is_file():
        from ..record.linux.elf_scenario import is_elf_scenario

        if is_elf_scenario(scenario):
            from ..record.linux.elf_scenario import describe_elf_scenario
            from ..record.recorder import record_description

            description = describe_elf_scenario(Path(scenario), options.max_steps, allow_outside)

            def record_elf_scenario(path: Path) -> Recording:
                label = f"recording {description.info.name}"
                with step_progress(description.max_steps, label) as bar:
                    return record_description(description, path, options, progress=bar)

            return description.info.name, record_elf_scenario
    from ..scenario import load_scenario

    loaded = load_scenario(scenario, options.limits, allow_outside)
    return loaded.name, lambda path: _record(loaded, path, options)


#: What to do instead with a file that is no program, by its suffix.
_INSTEAD = {
    (".s", ".S", ".asm"): "an assembly file: name it in a scenario, "
    '[program] file = "NAME", and record the .toml (docs/scenarios.md)',
    (".c", ".cc", ".cpp", ".cxx", ".rs", ".zig", ".go"): "source code: compile it into a "
    "static x86-64 program first (e.g. gcc -static -g NAME -o prog) and record that",
    (".parquet",): "a trace, already recorded: look at it with `stacktrace-lab report NAME` "
    "(or show, check, serve)",
}


def _refuse_what_is_no_program(path: Path) -> None:
    """A source file, an assembly file or a trace named where a program goes: say what
    to do with it instead of only 'not an ELF executable'."""
    try:
        with path.open("rb") as file:
            if file.read(4) == b"\x7fELF":
                return
    except OSError:
        return  # the ELF reader says why, in its own words
    for suffixes, instead in _INSTEAD.items():
        if path.suffix in suffixes:
            raise BadInput(f"{path}: not a program but {instead.replace('NAME', path.name)}")


def record_safely(recorder: Recorder, target: Path, force: bool = False) -> Recording:
    """Record into `target`, unless that would silently replace a different golden.

    The new trace goes to a hidden file next to the target (same file system:
    the final move is a rename) and into place only once decided.
    """
    # Before a recording that may take minutes: a device, FIFO or directory at
    # `target` is refused, and the hidden file proves the directory writable.
    safe_output.check_target(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fresh = safe_output.create_temp(target)  # a name that fits NAME_MAX
    except OSError as exc:
        raise BadInput(f"{target}: cannot write: {exc.strerror or exc}") from None
    try:
        try:
            recording = recorder(fresh)
        except BadInput as exc:
            # The writer names the file it writes (the hidden one); the user named `target`.
            raise BadInput(str(exc).replace(str(fresh), str(target))) from None
        _place(fresh, target, load_config().golden_path(target), force)
    finally:
        safe_output.discard_temp(fresh)  # nothing left when it was moved into place
    return recording


def _record(loaded: Scenario, path: Path, options: RecordOptions) -> Recording:
    from ..record.recorder import record

    total = options.max_steps or loaded.max_steps
    with step_progress(total, f"recording {loaded.name}") as bar:
        return record(loaded, path, options, progress=bar)


def _stderr_echo(text: str) -> None:
    click.echo(text, err=True)


def _place(fresh: Path, target: Path, golden: bool, force: bool) -> Path:
    """Move the new trace to `target`, unless that would silently replace a different golden."""
    if golden and target.exists() and not force:
        if _same_bytes(fresh, target):
            return target  # byte-identical: nothing to write
        raise BadInput(
            f"{target}: a different golden trace is already there; not replaced "
            "(use --force, or `pytest --stacktrace-lab-update` to update goldens on purpose)"
        )
    safe_output.commit_temp(fresh, target)  # a rename: never a half-written file at `target`
    return target


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            block_a, block_b = fa.read(1 << 20), fb.read(1 << 20)
            if block_a != block_b:
                return False
            if not block_a:
                return True
