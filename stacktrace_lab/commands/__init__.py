"""One module per subcommand; each exports one click command.

A command returns its exit status (an int) instead of calling sys.exit, so
`cli.main()` can be called in process by tests.
"""

import click

from .check import check_command
from .demo import demo_command
from .diff import diff_command
from .record import record_command
from .replay import replay_command
from .report import report_command
from .scenarios import scenarios_command
from .show import show_command
from .who_wrote import who_wrote_command

COMMANDS: list[click.Command] = [record_command, scenarios_command, check_command, diff_command]
COMMANDS += [report_command, demo_command]
COMMANDS += [show_command, who_wrote_command, replay_command]
