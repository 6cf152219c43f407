"""`stacktrace-lab gdbserver TRACE`: debug a trace in gdb, forwards and backwards."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("gdbserver")
@click.argument("trace", type=click.Path(path_type=Path))
@click.option(
    "--port", type=click.IntRange(0, 65535), default=2345, show_default=True,
    help="Port on 127.0.0.1 (0: any free port).",
)  # fmt: skip
@click.option(
    "--program", type=click.Path(path_type=Path), default=None,
    help="A compiled program's file, if it moved since recording (checked by its sha256).",
)  # fmt: skip
def gdbserver_command(trace: Path, port: int, program: Path | None) -> int:
    """Serve TRACE to gdb on 127.0.0.1:PORT (`target remote :PORT`), with reverse execution.
    Only this machine can connect; nothing is written. See docs/gdb.md."""
    # Imported when the command runs: `--help` loads no pyarrow (commands/__init__.py).
    from ..gdbserver import open_target, serve
    from ..trace.reader import load_trace

    loaded = load_trace(trace)
    served = open_target(loaded, program)
    try:
        server = serve(served, port)
    except OSError as exc:
        click.echo(f"stacktrace-lab: error: cannot listen on 127.0.0.1:{port}: {exc.strerror}",
                   err=True)  # fmt: skip
        return 2
    if served.note:
        click.echo(f"note: {served.note}; its code and data are unreadable", err=True)
    click.echo(
        f"serving {trace} ({loaded.num_rows} steps) to gdb on 127.0.0.1:{server.port}: "
        f"in gdb, `target remote :{server.port}` (Ctrl-C here to stop)",
        err=True,
    )
    try:
        server.serve()
    finally:
        server.close()
    return 0
