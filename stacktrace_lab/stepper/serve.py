"""`stacktrace-lab serve`: the stepper for a trace of any length, its steps read on demand.

An embedded stepper holds at most a few thousand steps. The served one holds
none: the page (the same stepper) asks this server for the window of steps
around the one it wants to show, and asks it to search the whole trace for
the previous or next call, ret, stack change or access. The server reads
those from the Parquet file (only the row groups a window or a search needs)
and keeps the shared analysis pass (rsp, instruction kinds, writes and the
frames of every stack) in memory.

The page and the first windows come before the analysis pass: the page
carries what the trace's metadata and its listing give, and its windows carry
no backtraces (`"bt": null`). The pass (rsp, instruction kinds, writes, the
frames of every stack), the rsp chart and the first switches need every step
read; they are made on the first request that needs them (the page asks for
`overview` once it shows its first step; a search), in that request's thread,
with a file handle of their own, while windows go on being answered.

It binds 127.0.0.1 only: the trace is the user's, and nothing here is meant
to be reachable from another machine. The standard library's HTTP server is
enough: one user, one page. Requests are answered one at a time (a lock), as
pyarrow file reads are not shared between threads here.

Routes:
- `/` the page;
- `/api/window?step=N` the window of steps around N, as the page embeds one;
- `/api/find?what=call|ret|stack|access&dir=1|-1&from=N[&addr=A&size=S|&reg=R]`
  answers `{"step": M}` or `{"step": null}`;
- `/api/overview` the rsp chart (SVG) and the first switches:
  `{"chart": "<svg ...>", "switches": [...]}`, once the analysis pass is made.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..analysis.events import derive_facts
from ..errors import BadInput
from ..explore.backtrace import frame_history
from ..explore.memory import MemoryCheckpoints
from ..explore.search import StepSearch
from ..trace.reader import Trace, load_trace
from .data import (
    MAX_SWITCH_WINDOWS,
    FrameContext,
    Switch,
    Window,
    embedded_window,
    rsp_chart,
    switch_data,
)
from .render import chart_svg, standalone_page

HOST = "127.0.0.1"
#: Steps either side of the asked step in a served window.
RADIUS = 250
#: Windows kept ready, most recently used last.
CACHED_WINDOWS = 16
ROUTES = {"window": "api/window", "find": "api/find", "overview": "api/overview"}


@dataclass(frozen=True)
class Analysis:
    """What needs every step read: the frames, the searches, the chart and switches."""

    frames: FrameContext
    search: StepSearch
    #: The `overview` route's answer.
    overview: bytes


class ServedTrace:
    """What the server answers from: the trace, the page and, once made, the analysis."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.page = standalone_page(trace, serve=ROUTES).encode("utf-8")
        self._windows: OrderedDict[int, bytes] = OrderedDict()
        # Stack memory at row-group starts, made on the first window past the first group.
        self._checkpoints: MemoryCheckpoints | None = None
        #: Held while a request reads `trace` (windows, searches).
        self.lock = threading.Lock()
        self._analysis: Analysis | None = None
        self._analysis_lock = threading.Lock()

    def analysis(self) -> Analysis:
        """The analysis pass and what comes of it, made on the first call (the others
        wait for it). It reads the file through a handle of its own, so windows are
        answered meanwhile from `trace`."""
        with self._analysis_lock:
            if self._analysis is None:
                self._analysis = _analyse(load_trace(self.trace.path))
            return self._analysis

    @property
    def analysed(self) -> bool:
        return self._analysis is not None

    def window(self, step: int) -> bytes:
        n = self.trace.num_rows
        if not 0 <= step < n:
            raise BadInput(f"no step {step}: the trace has steps 0 to {n - 1}")
        start = max(0, step - RADIUS)
        stop = min(n, step + RADIUS)
        analysis = self._analysis
        cached = self._windows.get(start)
        if cached is None or analysis is None:
            if (
                self._checkpoints is None
                and start >= self.trace.parquet.metadata.row_group(0).num_rows
            ):
                stacks = self.trace.metadata.stacks
                self._checkpoints = MemoryCheckpoints(self.trace, [(r.base, r.top) for r in stacks])
            frames = analysis.frames if analysis is not None else None
            data = embedded_window(self.trace, Window(start, stop), frames, self._checkpoints)
            cached = json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")
            if analysis is None:
                return cached  # no backtraces yet: not kept, the page asks again
            self._windows[start] = cached
            while len(self._windows) > CACHED_WINDOWS:
                self._windows.popitem(last=False)
        self._windows.move_to_end(start)
        return cached

    def find(self, query: dict[str, str], search: StepSearch) -> bytes:
        """A search's answer, from `search` (`analysis().search`)."""
        what = query.get("what", "")
        direction = 1 if int(query.get("dir", "1")) >= 0 else -1
        start = _number(query, "from", "0", -(1 << 62), 1 << 62)
        found: int | None
        if what == "access" and "reg" in query:
            found = search.register_access(query["reg"], start, direction)
        elif what == "access":
            # Bounded here: numpy would raise OverflowError past 64 bits (addr=-1,
            # addr=2**70), and the connection closed without an answer.
            addr = _number(query, "addr", None, 0, (1 << 64) - 1)
            size = _number(query, "size", "8", 1, 1 << 20)
            # addr + size stays below 2**64 (uint64 arithmetic in the search).
            found = search.access(addr, min(size, (1 << 64) - 1 - addr), start, direction)
        else:
            found = search.kind(what, start, direction)
        return json.dumps({"step": found}).encode("utf-8")


def _analyse(trace: Trace) -> Analysis:
    facts = derive_facts(trace)
    frames = FrameContext(facts, frame_history(facts))
    # The switch buttons' targets and the chart's marks: the first planted returns.
    switches = [
        Switch(p.ret_step, p.region, p.index, p.target, p.planted_step)
        for p in facts.planted_returns[:MAX_SWITCH_WINDOWS]
    ]
    switches_data = switch_data(switches)
    chart = chart_svg({"chart": rsp_chart(trace, []), "complete": True, "switches": switches_data})
    overview = json.dumps({"chart": str(chart), "switches": switches_data}).encode("utf-8")
    return Analysis(frames, StepSearch(facts), overview)


def _number(query: dict[str, str], key: str, default: str | None, lo: int, hi: int) -> int:
    """`query[key]` as an integer (0x... allowed) from lo to hi, else BadInput (a 400)."""
    text = query[key] if default is None else query.get(key, default)
    value = int(text, 0)
    if not lo <= value <= hi:
        raise BadInput(f"{key}={text} is not between {lo} and {hi:#x}")
    return value


#: The names this machine's browser uses for the server; any other Host is refused.
LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _local_host(header: str | None) -> bool:
    """Whether a Host header names this machine: `127.0.0.1` or `localhost`, with
    any port (or none: HTTP/1.0 clients send no Host)."""
    if header is None:
        return True
    name = header.strip().lower()
    name = name.rsplit(":", 1)[0] if ":" in name else name
    return name in LOCAL_HOSTS


def _handler(served: ServedTrace) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "stacktrace-lab"

        def do_GET(self) -> None:
            if not _local_host(self.headers.get("Host")):
                # DNS rebinding: a web page whose name now resolves to 127.0.0.1 must
                # not read the trace; a browser sends that page's name as Host.
                self._error(HTTPStatus.FORBIDDEN, "forbidden: Host must be 127.0.0.1 or localhost")
                return
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                # Made outside `served.lock`: windows are answered while it is made.
                if url.path in ("/" + ROUTES["find"], "/" + ROUTES["overview"]):
                    analysis = served.analysis()
                with served.lock:
                    if url.path in ("/", "/index.html"):
                        self._send(served.page, "text/html; charset=utf-8")
                    elif url.path == "/" + ROUTES["window"]:
                        self._send(served.window(int(query["step"])), "application/json")
                    elif url.path == "/" + ROUTES["find"]:
                        self._send(served.find(query, analysis.search), "application/json")
                    elif url.path == "/" + ROUTES["overview"]:
                        self._send(analysis.overview, "application/json")
                    elif url.path == "/favicon.ico":
                        self._send(b"", "image/x-icon", HTTPStatus.NO_CONTENT)
                    else:
                        self._error(HTTPStatus.NOT_FOUND, f"no page {url.path}")
            except (KeyError, ValueError, BadInput) as exc:
                self._error(HTTPStatus.BAD_REQUEST, f"bad request: {exc}")

        def _send(self, body: bytes, kind: str, status: HTTPStatus = HTTPStatus.OK) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: HTTPStatus, message: str) -> None:
            body = json.dumps({"error": message}).encode("utf-8")
            self._send(body, "application/json", status)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the command prints where it serves

    return Handler


def make_server(trace: Trace, port: int = 0) -> ThreadingHTTPServer:
    """A server for `trace` on 127.0.0.1 (port 0: any free port); call `serve_forever()`.

    The port is taken before the page is made, so a port in use is said at once; the
    trace is analysed on the first request that needs it (see the module's docstring).
    """
    server = ThreadingHTTPServer((HOST, port), BaseHTTPRequestHandler)
    try:
        server.RequestHandlerClass = _handler(ServedTrace(trace))
    except BaseException:
        server.server_close()
        raise
    return server
