"""`stacktrace-lab gdbserver`: gdb debugging a trace, forwards and backwards (issue 25).

The gdb tests drive the machine's own gdb (`gdb -batch -ex ...`) against a
server started in this process on a free port; they skip, saying why, where
gdb is missing (.ci/run installs it). The protocol tests talk to the server
over a raw socket; the exit-status tests run the command in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from stacktrace_lab.examples import build_example, compiler_missing
from stacktrace_lab.explore.memory import memory_before
from stacktrace_lab.gdbserver import open_target, serve
from stacktrace_lab.gdbserver.memory import MAX_READ
from stacktrace_lab.gdbserver.protocol import PacketReader, checksum, escape, frame, unescape
from stacktrace_lab.gdbserver.registers import REGISTER_TABLE, target_xml
from stacktrace_lab.trace import Trace, load_trace

TRACES = Path(__file__).resolve().parent.parent / "traces"
FIRST_SWITCH = TRACES / "first-switch.parquet"
CLOBBER = TRACES / "green-threads-clobber.parquet"
GDB = shutil.which("gdb")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed (.ci/run installs it)")


# --- helpers -----------------------------------------------------------------


@contextmanager
def served(trace: Path, cwd: Path | None = None) -> Iterator[int]:
    """A server for `trace` on a free port in a thread of this process; yields the port."""
    target = open_target(load_trace(trace), cwd=cwd)
    server = serve(target, 0, log=open(os.devnull, "w"))  # noqa: SIM115
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server.port
    finally:
        # A client that kills ends the loop; else the daemon thread dies with the tests.
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"$k#6b")
        thread.join(timeout=10)
        server.close()


def run_gdb(port: int, commands: list[str], cwd: Path, before: list[str] = ()) -> str:
    """gdb's output for `commands` run after attaching; `before` run before `target remote`."""
    args = [str(GDB), "-batch", "-nx", "-iex", "set auto-load no"]
    for command in [*before, f"target remote :{port}", *commands]:
        args += ["-ex", command]
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=180, check=False)
    return result.stdout + result.stderr


class Client:
    """A raw protocol client, acks on, for the robustness tests."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, payload: bytes) -> bytes:
        self.sock.sendall(frame(payload))
        return self.reply()

    def reply(self) -> bytes:
        """The next packet's payload (acks skipped, the packet acknowledged)."""
        while True:
            start = self.buffer.find(b"$")
            end = self.buffer.find(b"#", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0 and len(self.buffer) >= end + 3:
                payload = self.buffer[start + 1 : end]
                assert int(self.buffer[end + 1 : end + 3], 16) == checksum(payload)
                self.buffer = self.buffer[end + 3 :]
                self.sock.sendall(b"+")
                return payload
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buffer += data

    def close(self) -> None:
        self.sock.close()


def files_under(*dirs: Path) -> set[Path]:
    return {p for d in dirs for p in d.rglob("*")}


# --- item 1: registers, memory, moves ----------------------------------------------


def test_framing_round_trips_escapes_and_rejects_bad_checksums() -> None:
    data = bytes(range(256))
    assert unescape(escape(data)) == data
    reader = PacketReader()
    events = reader.feed(b"noise+$g#67-$g#00\x03$" + b"x" * 20000)
    assert [e.kind for e in events] == [
        "ack",
        "packet",
        "nak",
        "bad-checksum",
        "interrupt",
        "overlong",
    ]
    assert events[1].payload == b"g"


def test_the_target_description_names_what_gdb_needs() -> None:
    xml = target_xml()
    for feature in ("i386.core", "i386.sse", "i386.linux", "i386.segments"):
        assert f"org.gnu.gdb.{feature}" in xml
    names = [r.name for r in REGISTER_TABLE]
    assert names[:18] == [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        *[f"r{i}" for i in range(8, 16)], "rip", "eflags",
    ]  # fmt: skip


def test_memory_at_every_step_matches_the_snapshots_and_a_replay_of_the_writes() -> None:
    """The index against two independent answers: the stack snapshot columns
    (every step) and explore.memory's replay of the write log (some steps)."""
    trace = load_trace(CLOBBER)
    target = open_target(trace).target
    windows = list(trace.metadata.snapshots.values())
    table = trace.table([w.column for w in windows])
    for step in range(0, trace.num_rows, 7):
        for window in windows:
            expected = table.column(window.column)[step].as_py()
            assert target.memory.read(window.base, window.size, step) == expected, step
    runtime = trace.metadata.region("runtime")
    for step in (0, 500, 1700, trace.num_rows - 1, trace.num_rows):
        history = memory_before(trace, runtime.base, runtime.top, step)
        assert target.memory.read(runtime.base, runtime.size, step) == history.values.tobytes()


def test_registers_come_from_the_rows_and_unknown_ones_are_unavailable() -> None:
    trace = load_trace(FIRST_SWITCH)
    target = open_target(trace).target
    rows = trace.table(["rip", "rsp", "rflags"]).to_pylist()
    for step, row in enumerate(rows):
        target.state = step
        values = target.registers()
        assert (values["rip"], values["rsp"], values["eflags"]) == (
            row["rip"], row["rsp"], row["rflags"],
        )  # fmt: skip
        assert values["xmm0"] is None and values["cs"] is None and values["fs_base"] == 0
    target.state = trace.num_rows
    assert target.registers()["rip"] == trace.metadata.final["rip"]


def test_moves_stop_at_breakpoints_watchpoints_and_the_ends_both_ways() -> None:
    """The target's searches, without gdb: first-switch's 19 steps, 20 positions."""
    trace = load_trace(FIRST_SWITCH)
    target = open_target(trace).target
    hello = trace.metadata.symbols["hello"]
    slot = trace.metadata.region("green").base + 32
    assert target.step(False).why == "begin" and target.state == 0
    assert target.resume(False).why == "begin" and target.state == 0
    target.insert(0, hello, 1)
    assert target.resume(True).why == "breakpoint" and target.state == 13
    assert target.resume(True).why == "end" and target.state == 19
    assert target.step(True).why == "end" and target.state == 19
    assert target.step(False).why == "step" and target.state == 18
    assert target.resume(False).why == "breakpoint" and target.state == 13
    target.insert(2, slot, 8)
    stop = target.resume(False)  # back to the store, before it ran
    assert (stop.why, stop.addr, target.state) == ("watch", slot, 6)
    target.state = 0
    stop = target.resume(True)  # forwards: after the store
    assert (stop.why, target.state) == ("watch", 7)
    assert target.step(False).why == "watch" and target.state == 6  # un-executing the store
    target.remove(2, slot, 8)
    target.remove(0, hello, 1)
    assert target.resume(True).why == "end"
    target.insert(3, slot, 8)  # read: the ret at step 12 pops it
    target.state = 0
    assert target.resume(True).why == "rwatch" and target.state == 13


@needs_gdb
def test_gdb_attaches_at_step_0_with_registers_memory_and_symbols(tmp_path: Path) -> None:
    with served(FIRST_SWITCH) as port:
        out = run_gdb(
            port,
            ["info registers rip rsp eflags cs xmm0", "x/2i $pc", "x/gx $rsp", "monitor step",
             "x/gx 0", "info line *$pc"],
            tmp_path,
        )  # fmt: skip
    assert "main () at first-switch.toml:32" in out
    assert "rip            0x400000            0x400000 <main>" in out
    assert "rsp            0x1000fff8" in out
    assert "cs             <unavailable>" in out
    assert "uint128 = <unavailable>" in out
    assert "<main>:\tpush   %rbp" in out and "<main+1>:\tmov    %rsp,%rbp" in out
    assert "0x1000fff8 <main_base+65528>:\t0x00000000dead0000" in out  # the sentinel return
    assert "step 0 of 19: main+0: pushq %rbp (first-switch.toml:32)" in out
    assert "Cannot access memory at address 0x0" in out
    assert 'Line 32 of "first-switch.toml"' in out


# --- item 3: what a user does --------------------------------------------------------


@needs_gdb
def test_break_hello_continue_reverse_stepi_lands_on_gt_switchs_ret(tmp_path: Path) -> None:
    before = files_under(tmp_path, TRACES)
    with served(FIRST_SWITCH) as port:
        out = run_gdb(
            port,
            ["break hello", "continue", "monitor step", "reverse-stepi", "x/i $pc",
             "monitor step", "stepi", "monitor step"],
            tmp_path,
        )  # fmt: skip
    assert "Breakpoint 1, hello () at first-switch.toml:53" in out
    assert "step 13 of 19: hello+0" in out
    assert "=> 0x40003d <gt_switch+3>:\tret" in out
    assert "step 12 of 19: gt_switch+3: retq" in out
    assert out.index("step 12 of 19") < out.rindex("step 13 of 19")  # stepi goes forward again
    assert files_under(tmp_path, TRACES) == before  # nothing written, by gdb or the server


@needs_gdb
def test_monitor_goto_moves_to_a_step_and_gdb_rereads_its_registers(tmp_path: Path) -> None:
    with served(FIRST_SWITCH) as port:
        out = run_gdb(
            port,
            ["monitor goto 12", "maint flush register-cache", "x/i $pc", "reverse-stepi",
             "monitor step", "monitor goto 99", "monitor goto x"],
            tmp_path,
        )  # fmt: skip
    assert "step 12 of 19: gt_switch+3: retq" in out
    assert "=> 0x40003d <gt_switch+3>:\tret" in out
    assert "step 11 of 19: gt_switch+0: movq (%rdi), %rsp" in out
    assert "no step 99: the trace has positions 0 to 19" in out
    assert "monitor commands: step" in out


@needs_gdb
def test_a_watchpoint_on_the_planted_slot_reverse_continues_to_the_store(tmp_path: Path) -> None:
    with served(FIRST_SWITCH) as port:
        out = run_gdb(
            port,
            ["break hello", "continue", "reverse-stepi", "x/gx $rsp", "watch -l *(long*)$rsp",
             "reverse-continue", "x/i $pc", "monitor step", "reverse-continue", "monitor step"],
            tmp_path,
        )  # fmt: skip
    # The region symbols of the generated ELF name the slot as its index in green.
    assert "<green_base+32>:\t0x000000000040003e" in out
    assert "Old value = 4194366\nNew value = 0" in out  # hello's address, and before: 0
    assert "=> 0x400024 <main+36>:\tmov    %rcx,0x20(%rax)" in out
    assert "step 6 of 19: main+36: movq %rcx, 0x20(%rax) (first-switch.toml:38)" in out
    # Further back nothing wrote the slot: the start of the trace.
    assert "No more reverse-execution history." in out
    assert "step 0 of 19" in out


@needs_gdb
def test_watch_rbx_reverse_continue_finds_where_the_clobbered_value_came_from(
    tmp_path: Path,
) -> None:
    """green-threads-clobber: worker 1's second line prints thread 3's id. rbx
    holds it because switch never loads rbx back; going back from there, the
    last instruction that changed rbx is thread 3's worker setting its own id."""
    with served(CLOBBER) as port:
        out = run_gdb(
            port,
            ["break print_counter", "ignore 1 3", "continue", "p $rdi", "bt 3", "delete",
             "watch $rbx", "reverse-continue", "x/i $pc", "p $rdi", "bt 2", "monitor step"],
            tmp_path,
        )  # fmt: skip
    assert "$1 = 3" in out  # worker 1 (thread1 in bt) about to print id 3
    assert "in thread1 () at green-threads-clobber.toml" in out
    assert "Old value = 3\nNew value = 2" in out
    assert "=> 0x4001e0 <worker+13>:\tmov    %rdi,%rbx" in out
    assert "$2 = 3" in out  # worker's first argument there: thread 3's id
    assert "in thread3 () at green-threads-clobber.toml" in out
    assert "step 662 of 3423: worker+13: movq %rdi, %rbx" in out


@needs_gdb
def test_reverse_step_and_reverse_finish_use_the_generated_line_table(tmp_path: Path) -> None:
    with served(CLOBBER) as port:
        out = run_gdb(
            port,
            ["break append_number", "continue", "next", "next", "monitor step",
             "reverse-step", "monitor step", "delete", "reverse-finish", "monitor step"],
            tmp_path,
        )  # fmt: skip
    positions = [line for line in out.splitlines() if line.startswith("step ")]
    steps = [int(line.split()[1]) for line in positions]
    assert len(steps) == 3 and steps[0] > steps[1] > steps[2], out
    assert "append_number+" in positions[1]
    # reverse-finish stops at the call that entered append_number, in print_counter
    # (a breakpoint at append_number would stop it there first, as in any gdb).
    assert "print_counter+" in positions[2] and "callq 0x400297" in positions[2], out


@needs_gdb
def test_read_watchpoints_come_from_the_reads_column(tmp_path: Path) -> None:
    """`rwatch` on the planted slot: the ret that pops hello reads it (step 12),
    so forwards gdb stops after it, in hello."""
    slot = load_trace(FIRST_SWITCH).metadata.region("green").base + 32
    with served(FIRST_SWITCH) as port:
        out = run_gdb(
            port,
            [f"rwatch -l *(long*){slot:#x}", "continue", "monitor step", "delete",
             f"awatch -l *(long*){slot:#x}", "reverse-continue", "monitor step"],
            tmp_path,
        )  # fmt: skip
    assert "Hardware read watchpoint 1" in out
    assert "Value = 4194366" in out
    assert "step 13 of 19: hello+0" in out
    assert "step 12 of 19: gt_switch+3: retq" in out  # going back, the read itself


@pytest.fixture(scope="session")
def rust_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    why = compiler_missing("rust-static-pie")
    if why is not None:
        pytest.skip(f"cannot build the Rust example: {why}")
    from stacktrace_lab.record.linux.elf_front import record_elf

    out = tmp_path_factory.mktemp("gdb-rust")
    program = build_example("rust-static-pie", out)
    return program, record_elf(program, out / "rust.parquet").path


@needs_gdb
def test_rust_bt_at_the_overflow_shows_printlns_frames(rust_trace: tuple[Path, Path]) -> None:
    """`file ./prog` gives gdb its own symbols; the first write below the green
    stack's base is println!'s `_print`, called from hello."""
    program, trace = rust_trace
    with served(trace, cwd=program.parent) as port:
        out = run_gdb(
            port,
            ["break first_switch::hello", "continue", "set language c",
             "watch -l *(char(*)[64])($rsp - 96)", "continue", "bt", "monitor step"],
            program.parent,
            before=[f"file {program}"],
        )  # fmt: skip
    assert "Breakpoint 1, first_switch::hello () at " in out
    frames = [line for line in out.splitlines() if line.startswith("#")]
    assert "in std::io::stdio::_print () at " in frames[0], out
    assert "in first_switch::hello () at " in frames[1] and "first_switch.rs:22" in frames[1]
    assert ": std::io::stdio::_print+" in out


@needs_gdb
def test_rust_bt_at_the_deepest_point_of_the_overflow(rust_trace: tuple[Path, Path]) -> None:
    """Where rsp goes lowest below the green stack (as `check` reports it), `monitor
    goto` there: gdb unwinds println!'s whole chain back to hello."""
    program, trace_path = rust_trace
    trace = load_trace(trace_path)
    green = next(r for r in trace.metadata.stacks if r.size == 48)
    rsp = trace.column("rsp").astype(np.int64)
    below = np.flatnonzero(rsp < green.base)
    deepest = int(below[np.argmin(rsp[below])])
    with served(trace_path, cwd=program.parent) as port:
        out = run_gdb(
            port,
            [f"monitor goto {deepest}", "maint flush register-cache", "bt"],
            program.parent,
            before=[f"file {program}"],
        )
    frames = [line for line in out.splitlines() if line.startswith("#")]
    assert len(frames) > 10, out
    names = "\n".join(frames)
    assert "std::io::stdio::_print ()" in names and "std::io::stdio::stdout ()" in names
    assert "first_switch::hello () at " in frames[-2]


# --- item 4: robust ------------------------------------------------------------------


def test_unknown_malformed_refused_and_bounded_packets() -> None:
    with served(FIRST_SWITCH) as port:
        client = Client(port)
        assert client.ask(b"qThisIsNotAPacket") == b""
        assert client.ask(b"vMustReplyEmpty") == b""
        assert client.ask(b"mzz,4") == b"E01"  # malformed arguments
        assert client.ask(b"p999") == b"E00"
        assert client.ask(b"M400000,1:cc") == b"E01"  # a trace cannot be changed
        assert client.ask(b"G" + b"00" * 8) == b"E01"
        client.send_raw(b"$g#00")  # a wrong checksum is answered with a nak
        assert client.sock.recv(1) == b"-"
        big = client.ask(b"m400000,ffffffff")
        assert len(big) == 2 * MAX_READ  # bounded: gdb asks again for the rest
        code = load_trace(FIRST_SWITCH).metadata.code
        assert bytes.fromhex(big.decode())[: len(code)] == code
        # The code's page ends at 0x401000: a read stops there (unmapped beyond).
        assert len(client.ask(b"m400f00,ffffffff")) == 2 * 0x100
        assert client.ask(b"m401000,1") == b"E14"
        assert client.ask(b"m0,8") == b"E14"
        assert client.ask(b"vFile:open:%s,0,0" % b"/etc/passwd".hex().encode()) == b"F-1,2"
        exec_path = b"/stacktrace-lab/first-switch.elf".hex().encode()
        assert client.ask(b"vFile:open:%s,1,0" % exec_path) == b"F-1,d"  # no writing
        assert client.ask(b"?").startswith(b"T05")
        client.close()


def test_a_second_client_is_refused_and_a_disconnect_frees_the_server() -> None:
    with served(FIRST_SWITCH) as port:
        first = Client(port)
        assert first.ask(b"qC") == b"QC1"
        assert first.ask(b"s").startswith(b"T05")
        second = Client(port)
        with pytest.raises(ConnectionError):
            second.ask(b"qC")
        second.close()
        assert first.ask(b"qC") == b"QC1"  # the first one is still served
        first.close()  # disconnects without k or D
        third = Client(port)
        reply = third.ask(b"?")
        assert b"10:0000400000000000" in reply  # a new client starts again at step 0
        # Gone (reset) before its reply is sent: the server serves the next one.
        third.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        third.send_raw(frame(b"m10000000,1000") * 50)
        third.close()
        fourth = Client(port)
        assert fourth.ask(b"qC") == b"QC1"
        fourth.close()


def _command(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stacktrace_lab", "gdbserver", *args],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _port_of(process: subprocess.Popen[str]) -> int:
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "127.0.0.1:" in line, line
    return int(line.split("127.0.0.1:")[1].split(":")[0])


@pytest.mark.parametrize("ending", [b"k", b"D", b"vKill;1"])
def test_kill_or_detach_ends_the_server_with_status_0_and_nothing_written(
    tmp_path: Path, ending: bytes
) -> None:
    trace = tmp_path / "first-switch.parquet"
    shutil.copy(FIRST_SWITCH, trace)
    before = files_under(tmp_path)
    process = _command(str(trace), "--port", "0", cwd=tmp_path)
    port = _port_of(process)
    client = Client(port)
    assert client.ask(b"m10000000,4") == b"00000000"
    client.send_raw(frame(ending))
    assert process.wait(timeout=30) == 0
    client.close()
    assert files_under(tmp_path) == before


def test_ctrl_c_ends_the_server_with_status_130(tmp_path: Path) -> None:
    process = _command(str(FIRST_SWITCH), "--port", "0", cwd=tmp_path)
    _port_of(process)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 130
    assert process.stderr is not None
    assert "interrupted (SIGINT)" in process.stderr.read()


def test_a_trace_that_does_not_load_is_one_line_and_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    result = subprocess.run(
        [sys.executable, "-m", "stacktrace_lab", "gdbserver", str(bad), "--port", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in result.stderr


def test_a_port_in_use_is_one_line_and_status_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "stacktrace_lab", "gdbserver", str(FIRST_SWITCH),
             "--port", str(port)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"stacktrace-lab: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_it_listens_on_127_0_0_1_only() -> None:
    target = open_target(load_trace(FIRST_SWITCH))
    server = serve(target, 0, log=open(os.devnull, "w"))  # noqa: SIM115
    try:
        assert server.listener.getsockname()[0] == "127.0.0.1"
    finally:
        server.close()


# --- speed: the index answers without scanning --------------------------------------


def test_the_write_index_answers_watch_searches_both_ways() -> None:
    trace: Trace = load_trace(FIRST_SWITCH)
    writes = open_target(trace).target.memory.writes
    green = trace.metadata.region("green")
    slot = (green.base + 32, green.base + 40)
    assert writes.first_after([slot], 0) == (6, slot[0])
    assert writes.first_after([slot], 7) is None
    assert writes.last_before_any([slot], 19) == (6, slot[0])
    assert writes.last_before_any([slot], 6) is None
    steps = np.array([s for s, *_ in writes.last_before(green.base, green.top, 19)])
    assert list(steps) == [6]
