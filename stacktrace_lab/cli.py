"""The command line: `stacktrace-lab COMMAND ...`.

Commands are thin: each lives in `commands/` and calls the library. `main()`
is the only entry point; it turns the package's own errors into exit status 2
with one line on stderr, so no user sees a traceback for bad input.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import signal
import sys
from collections.abc import Sequence

import click

from . import __version__
from .commands import COMMANDS, SHORT_HELP
from .errors import BadInput
from .safe_output import Interrupted, output_named, remove_pending, stop_on_signals


class StoppedBySignal(Exception):
    """SIGTERM or SIGHUP stopped a command. Not a KeyboardInterrupt, so click
    passes it on as it is instead of turning it into a bare Abort (which would
    lose the signal and print a blank line meant to close a terminal's `^C`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is used."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Interrupted as exc:
            if exc.signum == signal.SIGINT:
                raise  # click closes the terminal's ^C echo, then main() says so
            raise StoppedBySignal(exc.signum) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own version loads every command for its one-line help; the
        # registry has that line, so `--help` imports no command module.
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        # A bare Command shortens the text exactly as click shortens a real one's;
        # a command missing from the registry is imported for its help.
        rows = []
        for name in COMMANDS:
            command = (
                click.Command(name, help=SHORT_HELP[name])
                if name in SHORT_HELP
                else self.get_command(ctx, name)
            )
            if command is not None:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stacktrace-lab")
def cli() -> None:
    """Record x86-64 stack switches in an emulator and explain what happened to the stack."""


def usage_error_line(error: click.UsageError) -> str:
    """Click's three-line usage error as one line: the command, the cause, where help is."""
    command = error.ctx.command_path if error.ctx is not None else "stacktrace-lab"
    cause = " ".join(error.format_message().split())
    return f"{command}: {cause} (see '{command} --help')"


#: Commands whose process ends without tearing the interpreter down (`_end_process`).
ENDS_AT_ONCE = frozenset({"record"})


def main(argv: Sequence[str] | None = None) -> int:
    ends_at_once = argv is None and sys.argv[1:2] and sys.argv[1] in ENDS_AT_ONCE
    if ends_at_once:
        # No cycle collection in a process that ends at once: the collector's runs
        # over symbol tables and the metadata (200 of them) cost 0.045 CPU s of a
        # `record --from main` of a dynamic Rust program, and a recording makes no
        # cyclic garbage worth it (peak RSS the same at three million steps).
        gc.disable()
    status = _run(argv)
    if ends_at_once:
        _end_process(status)
    return status


def _end_process(status: int) -> None:
    """End the process now, without tearing the interpreter down: freeing numpy's,
    pyarrow's and unicorn's objects and 450 modules costs about 0.1 CPU s of a
    `record --from main` that issue 21 wants under one second. What tear-down does
    that matters is done first: the exit handlers run (the assembler's worker
    process) and the output is flushed. The trace was closed and moved into place
    before the command returned, its worker threads joined. Only in the process's
    own entry point (`main()` without arguments), never for a caller of `main`."""
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # a closed or broken stream: Python's own exit says so
    os._exit(status)


def _run(argv: Sequence[str] | None) -> int:
    try:
        # The program itself (argv from sys.argv): a signal ends the process at once,
        # with one line. Called in process (tests, scripts): it raises Interrupted.
        with stop_on_signals(exit_process=argv is None):
            result = cli.main(
                args=list(argv) if argv is not None else None,
                prog_name="stacktrace-lab",
                standalone_mode=False,
            )
    except (Interrupted, StoppedBySignal) as exc:
        return _interrupted(exc.signum)
    except BadInput as exc:
        click.echo(f"stacktrace-lab: error: {exc}", err=True)
        return 2
    except OSError as exc:
        # A file the user named could not be read or written (permissions, a
        # full disk): their input, not a bug, so one line and status 2.
        # A temporary file of ours is named as the output it was to become.
        where = f"{output_named(exc.filename)}: " if exc.filename else ""
        cause = " ".join(str(exc.strerror or exc).split())
        click.echo(f"stacktrace-lab: error: {where}{cause}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        click.echo(f"stacktrace-lab: error: {usage_error_line(exc)}", err=True)
        return 2
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        return _interrupted(signal.SIGINT)  # Ctrl-C, or end of input at a prompt
    return int(result) if isinstance(result, int) else 0


def _interrupted(signum: int) -> int:
    """Remove the temporary files in progress, say which signal, and exit as a
    shell reports a process killed by it (128 + its number)."""
    remove_pending()
    click.echo(f"stacktrace-lab: interrupted ({signal.Signals(signum).name})", err=True)
    return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
