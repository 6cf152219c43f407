"""How fast `stacktrace-lab gdbserver` answers gdb at any step of a long trace.

Run by hand (the machines are shared; wall-clock figures under load):

    python benchmarks/bench_gdbserver.py --trace call-heavy-10m.parquet
    python benchmarks/bench_gdbserver.py --steps 1000000     # records call-heavy first

A 10-million-step trace takes a few minutes to record:
`stacktrace-lab record benchmarks/call-heavy.toml --max-steps 10000000 -o call-heavy-10m.parquet`.

Phases:

- `open`: load the trace and build the server's state (the write index,
  the initial image): the start-up before gdb can attach; with peak RSS;
- `stop at a random step`: what gdb asks at each stop, at `--samples` steps
  spread over the whole trace, each in another row group than the one
  before (no cache helps): all registers (`g`), 64 bytes at rsp, 4 KiB of
  the stack below it and 16 bytes at rip; median, 95th percentile, worst;
- the same through the protocol: `g` and two `m` packets over a socket to a
  served trace, after moving the target to the step;
- `continue`/`reverse-continue` to a breakpoint that is never hit (a scan of
  every rip from the middle to either end), and to a write watchpoint on a
  stack slot written millions of times.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "call-heavy.toml"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def summary(name: str, times: list[float]) -> None:
    times = sorted(times)
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    print(
        f"| {name} | {ms(statistics.median(times))} | {ms(p95)} | {ms(times[-1])} | {len(times)} |"
    )


def ask(sock: socket.socket, payload: bytes) -> bytes:
    from stacktrace_lab.gdbserver.protocol import frame

    sock.sendall(frame(payload))
    buffer = b""
    while True:
        buffer += sock.recv(1 << 16)
        # Acks before the reply ("+") are skipped: the reply starts at "$".
        start = buffer.find(b"$")
        end = buffer.find(b"#", start)
        if start >= 0 and end >= 0 and len(buffer) >= end + 3:
            return buffer[start + 1 : end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, help="a recorded trace (else call-heavy is recorded)")
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        trace_path = args.trace
        if trace_path is None:
            from stacktrace_lab.record.recorder import RecordOptions, record
            from stacktrace_lab.scenario import load_scenario

            trace_path = Path(tmp) / "call-heavy.parquet"
            record(load_scenario(SCENARIO), trace_path, RecordOptions(max_steps=args.steps))
        run(trace_path, args.samples)


def run(trace_path: Path, samples: int) -> None:
    from stacktrace_lab.gdbserver import open_target, serve
    from stacktrace_lab.trace.reader import load_trace

    baseline = peak_rss_mib()
    start = time.perf_counter()
    trace = load_trace(trace_path)
    served = open_target(trace)
    opened = time.perf_counter() - start
    target = served.target
    writes = target.memory.writes
    print(f"trace: {trace_path} ({trace.num_rows:,} steps, {trace.num_row_groups} row groups)")
    print(
        f"open: {opened:.2f} s; {writes.entries:,} writes in {len(writes.cell_addr):,} cells; "
        f"peak RSS {peak_rss_mib():.0f} MiB (imports: {baseline:.0f} MiB)"
    )
    print()
    print("| what | median | p95 | worst | samples |")
    print("|---|---|---|---|---|")

    rng = random.Random(25)
    group_rows = trace.parquet.metadata.row_group(0).num_rows
    groups = trace.num_row_groups
    order = [rng.randrange(groups) for _ in range(samples)]
    steps = [min(trace.num_rows - 1, g * group_rows + rng.randrange(group_rows)) for g in order]
    stop_times = []
    for step in steps:
        t0 = time.perf_counter()
        target.state = step
        values = target.registers()
        rsp, rip = int(values["rsp"] or 0), int(values["rip"] or 0)
        assert target.read_memory(rsp, 64) is not None
        target.read_memory(rsp - 4096, 4096)
        assert target.read_memory(rip, 16) is not None
        stop_times.append(time.perf_counter() - t0)
    summary("registers + 64 B at rsp + 4 KiB of stack + 16 B at rip, random step", stop_times)

    server = serve(served, 0, log=open(os.devnull, "w"))  # noqa: SIM115
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    packet_times = []
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        assert ask(sock, b"QStartNoAckMode") == b"OK"
        for step in steps[: samples // 2]:
            target.state = step
            t0 = time.perf_counter()
            regs = ask(sock, b"g")
            rsp = int.from_bytes(bytes.fromhex(regs[7 * 16 : 8 * 16].decode()), "little")
            ask(sock, b"m%x,40" % rsp)
            ask(sock, b"m%x,1000" % (rsp - 0x1000))
            packet_times.append(time.perf_counter() - t0)
        summary("the same as `g` + 2 `m` packets over the socket", packet_times)
        sock.sendall(b"$k#6b")
    thread.join(timeout=10)
    server.close()

    middle = trace.num_rows // 2
    target.points.breakpoints.add(0xDEAD)  # never executed: a scan of every rip
    for forward in (True, False):
        target.state = middle
        t0 = time.perf_counter()
        stop = target.resume(forward)
        name = "continue" if forward else "reverse-continue"
        summary(
            f"{name} from the middle, breakpoint never hit ({stop.why})", [time.perf_counter() - t0]
        )
    target.points.breakpoints.clear()
    busiest = int(writes.cell_addr[int((writes.cell_end - writes.cell_first).argmax())])
    target.insert(2, busiest, 8)
    for forward in (True, False):
        times = []
        for step in steps[:50]:
            target.state = step
            t0 = time.perf_counter()
            target.resume(forward)
            times.append(time.perf_counter() - t0)
        name = "continue" if forward else "reverse-continue"
        summary(f"{name} to a watchpoint on the busiest slot ({busiest:#x})", times)


if __name__ == "__main__":
    main()
