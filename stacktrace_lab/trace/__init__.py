"""The trace file: one Parquet file per recorded run (format in docs/trace-format.md)."""

from .format import FORMAT_NAME, FORMAT_VERSION, TraceMetadata
from .reader import Trace, load_trace

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Trace", "TraceMetadata", "load_trace"]
