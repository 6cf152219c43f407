"""The command line: `stacktrace-lab COMMAND ...`.

Commands are thin: each lives in `commands/` and calls the library. `main()`
is the only entry point; it turns the package's own errors into exit status 2
with one line on stderr, so no user sees a traceback for bad input.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from . import __version__
from .commands import COMMANDS
from .errors import BadInput


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stacktrace-lab")
def cli() -> None:
    """Record x86-64 stack switches in an emulator and explain what happened to the stack."""


for command in COMMANDS:
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        result = cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except BadInput as exc:
        click.echo(f"stacktrace-lab: error: {exc}", err=True)
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
