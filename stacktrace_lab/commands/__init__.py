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
    "gdbserver": "stacktrace_lab.commands.gdbserver:gdbserver_command",
}

#: The first paragraph of each command's help, which `stacktrace-lab --help`
#: lists: listing the commands then imports none of them (a test keeps these
#: equal to the commands' own docstrings).
SHORT_HELP: dict[str, str] = {
    "record": "Record SCENARIO (a built-in name or a .toml file), or an x86-64 Linux PROGRAM, "
    "static or dynamically linked (give its arguments after --), into a trace.",
    "scenarios": "List the built-in scenarios with what each shows.",
    "check": "Check TRACE against the invariants: exit 0 if all hold, 1 if one fails.",
    "report": "Write the report of TRACE: exit 0 if every invariant holds, 1 if one fails.",
    "demo": "Record first-switch into stacktrace-lab-traces/ and write its report into "
    "reports/first-switch/ (with --rust: the tutorial's Rust program, into first-switch-rust; "
    "with --example NAME: that example program, into reports/NAME/).",
    "diff": "Compare trace A (the reference, e.g. a golden) with trace B.",
    "show": "Show one step of TRACE: every stack's backtrace, registers, code around rip and "
    "the stack telescope.",
    "who-wrote": "Which step last wrote SLOT (REGION[INDEX] such as green[32], or an address) "
    "before a step.",
    "replay": "Re-run TRACE from its own code, layout and initial state; compare every step.",
    "silicon-check": "Single-step TARGET on this CPU and compare every step with the emulated run.",
    "query": "Run SQL over one or more traces (paths or quoted globs): views steps, accesses, "
    "calls, switches, planted, syscalls (and tables traces, regions, labels), each with a "
    "`trace` column. See docs/sql.md.",
    "export": "Export TRACE for Perfetto UI (one track per stack, a slice per call, instants "
    "at switches and violations) or for the Tenet trace explorer.",
    "serve": "Serve TRACE's stepper on http://127.0.0.1:PORT/, reading steps from the file on "
    "demand, so any step of a multi-million-step trace can be reached. Only this machine can "
    "connect.",
    "gdbserver": "Serve TRACE to gdb on 127.0.0.1:PORT (`target remote :PORT`), with reverse "
    "execution. Only this machine can connect; nothing is written. See docs/gdb.md.",
}
