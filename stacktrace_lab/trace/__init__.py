"""The trace file: one Parquet file per recorded run (format in docs/trace-format.md)."""

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
