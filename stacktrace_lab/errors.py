"""Error types that the command line turns into exit codes.

A `BadInput` is the user's input being wrong (a missing file, malformed TOML,
an assembly error, a trace of a newer version). Its message is one line that
names the file, and the command line prints it and exits with status 2.
"""


class StacktraceLabError(Exception):
    """Base class of the package's own errors."""


class BadInput(StacktraceLabError):
    """The input cannot be used; the message is one line naming the file."""

    def __init__(self, message: str) -> None:
        # Keep the message to one line whatever the underlying library said.
        super().__init__(" ".join(message.split()))
