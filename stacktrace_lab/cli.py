"""The command line: `stacktrace-lab COMMAND ...`.

Commands are thin: each lives in `commands/` and calls the library. `main()`
is the only entry point; it turns the package's own errors into exit status 2
with one line on stderr, so no user sees a traceback for bad input.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import click

from . import __version__
from .commands import COMMANDS, SHORT_HELP
from .errors import BadInput


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is used."""

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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        result = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except BadInput as exc:
        click.echo(f"stacktrace-lab: error: {exc}", err=True)
        return 2
    except OSError as exc:
        # A file the user named could not be read or written (permissions, a
        # full disk): their input, not a bug, so one line and status 2.
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"stacktrace-lab: error: {where}{exc.strerror or exc}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("stacktrace-lab: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("stacktrace-lab: interrupted", err=True)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
