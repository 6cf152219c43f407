"""The trace file: one Parquet file per recorded run (format in docs/trace-format.md).

`Trace` and `load_trace` are imported from the reader when first used: a
command that only writes traces, or reads none (the silicon check of a
program), does not pay for pyarrow.parquet and the validator.
"""

from typing import TYPE_CHECKING, Any

from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INSTRUCTION_KINDS,
    ProgramInfo,
    SourceLine,
    StartInfo,
    SyscallRecord,
    TraceMetadata,
)

if TYPE_CHECKING:
    from .reader import Trace, load_trace

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INSTRUCTION_KINDS",
    "ProgramInfo",
    "SourceLine",
    "StartInfo",
    "SyscallRecord",
    "Trace",
    "TraceMetadata",
    "load_trace",
]


def __getattr__(name: str) -> Any:
    if name in ("Trace", "load_trace"):
        from . import reader

        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
