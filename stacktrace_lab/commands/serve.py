"""`stacktrace-lab serve TRACE`: step through a trace of any length in the browser."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("serve")
@click.argument("trace", type=click.Path(path_type=Path))
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
    help="Port on 127.0.0.1 (0: any free port).",
)  # fmt: skip
def serve_command(trace: Path, port: int) -> int:
    """Serve TRACE's stepper on http://127.0.0.1:PORT/, reading steps from the file on demand,
    so any step of a multi-million-step trace can be reached. Only this machine can connect."""
    from ..stepper.serve import make_server
    from ..trace.reader import load_trace

    loaded = load_trace(trace)
    try:
        server = make_server(loaded, port)
    except OSError as exc:
        click.echo(f"stacktrace-lab: error: cannot listen on 127.0.0.1:{port}: {exc.strerror}",
                   err=True)  # fmt: skip
        return 2
    click.echo(f"serving {trace} at http://127.0.0.1:{server.server_port}/ (Ctrl-C to stop)",
               err=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
