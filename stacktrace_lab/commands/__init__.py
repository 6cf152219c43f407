"""One module per subcommand; each exports one click command.

A command returns its exit status (an int) instead of calling sys.exit, so
`cli.main()` can be called in process by tests.

Commands are imported when they run, not when the program starts: `record`
needs unicorn, `report` matplotlib, and importing everything for every
command cost about a second of start-up.
"""

#: command name -> "module:attribute" of its click command, in `--help` order.
COMMANDS: dict[str, str] = {
    "record": "stacktrace_lab.commands.record:record_command",
    "scenarios": "stacktrace_lab.commands.scenarios:scenarios_command",
    "check": "stacktrace_lab.commands.check:check_command",
    "report": "stacktrace_lab.commands.report:report_command",
    "demo": "stacktrace_lab.commands.demo:demo_command",
    "diff": "stacktrace_lab.commands.diff:diff_command",
    "show": "stacktrace_lab.commands.show:show_command",
    "who-wrote": "stacktrace_lab.commands.who_wrote:who_wrote_command",
    "replay": "stacktrace_lab.commands.replay:replay_command",
    "silicon-check": "stacktrace_lab.commands.silicon_check:silicon_check_command",
    "query": "stacktrace_lab.commands.query:query_command",
    "export": "stacktrace_lab.commands.export:export_command",
    "serve": "stacktrace_lab.commands.serve:serve_command",
}
