"""Exports of a trace for viewers people already know.

- `perfetto`: Chrome trace-event JSON (opens in Perfetto UI, chrome://tracing
  and speedscope): one track per stack, a slice per function call, instant
  events at stack switches, planted returns and invariant violations.
- `tenet`: Tenet's text trace (one line per executed instruction: the
  registers it changed, rip, and the memory it read and wrote), for the Tenet
  trace explorer.

Both read only the trace file.
"""

from .perfetto import chrome_trace_events, write_chrome_trace
from .tenet import write_tenet

__all__ = ["chrome_trace_events", "write_chrome_trace", "write_tenet"]
