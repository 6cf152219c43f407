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
}

#: The first paragraph of each command's help, which `stacktrace-lab --help`
#: lists: listing the commands then imports none of them (a test keeps these
#: equal to the commands' own docstrings).
SHORT_HELP: dict[str, str] = {
    "record": "Record SCENARIO (a built-in name or a .toml file) into a trace.",
    "scenarios": "List the built-in scenarios with what each shows.",
    "check": "Check TRACE against the invariants: exit 0 if all hold, 1 if one fails.",
    "report": "Write the report of TRACE: exit 0 if every invariant holds, 1 if one fails.",
    "demo": "Record first-switch into traces/ and write its report into reports/first-switch/.",
    "diff": "Compare trace A (the reference, e.g. a golden) with trace B.",
    "show": "Show one step of TRACE: registers, code around rip and the stack telescope.",
    "who-wrote": "Which step last wrote SLOT (REGION:INDEX such as green:32, or an address) "
    "before a step.",
    "replay": "Re-run TRACE from its own code, layout and initial state; compare every step.",
}
