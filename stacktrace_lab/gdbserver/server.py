"""The server: one gdb at a time on 127.0.0.1, answering from a `TraceTarget`.

`Session.answer` maps one packet to its reply; `GdbServer` owns the sockets.
Nothing here writes a file: the executable gdb loads for a scenario is built
in memory and read by gdb over the protocol (`vFile:*`), and every packet
that would change the target (`G`, `P`, `M`, `X`, `vFile:pwrite`) is refused.

Packets answered (everything else gets the empty reply, "not supported"):

- `qSupported`: PacketSize, no-ack mode, `qXfer` features/exec-file/auxv,
  reverse step and continue, `swbreak`;
- `?`: why the target is stopped (at connect: state 0);
- `g`, `p n`: registers of the current state, `xx` for those not recorded;
- `m addr,len`: memory before the current step, at most `MAX_READ` bytes,
  `E14` where nothing is mapped;
- `s`, `c`, `bs`, `bc`: step or continue, forwards or backwards; stop replies
  say `swbreak`, `watch`/`rwatch`/`awatch` or `replaylog:begin`/`end`;
- `Z0`..`Z4`, `z0`..`z4`: breakpoints (software and hardware alike), watchpoints;
- `qXfer:features:read:target.xml`: the target description;
- `qXfer:exec-file:read`: the executable gdb should load (for a scenario, a
  virtual path that only this server serves);
- `qXfer:auxv:read`: for a compiled program, AT_ENTRY and AT_PHDR, from
  which gdb places a static-pie;
- `vFile:setfs/open/pread/fstat/close`: that one executable, read-only;
- `qRcmd`: `monitor step` (the current step, symbol and source line),
  `monitor goto N` (move to step N);
- `k`, `D`, `vKill`: end the server, exit status 0.
"""

from __future__ import annotations

import selectors
import socket
import struct
import sys
from dataclasses import dataclass
from typing import TextIO

from .protocol import MAX_PACKET, Event, PacketReader, escape, frame, unescape
from .registers import REGISTER_NUMBER, REGISTER_TABLE, encode, target_xml
from .target import Stop, TraceTarget

HOST = "127.0.0.1"
#: Breakpoints plus watchpoints a client may set.
MAX_POINTS = 4096
#: Bytes of a `vFile:pread` or `qXfer` reply: escaping can double them.
MAX_TRANSFER = (MAX_PACKET - 32) // 2
#: Registers sent with every stop reply, so gdb need not ask: rbp, rsp, rip.
_EXPEDITED = ("rbp", "rsp", "rip")
#: gdb's File-I/O errno values.
_ENOENT, _EBADF, _EACCES, _EINVAL = 2, 9, 13, 22
_S_IFREG = 0o100000


@dataclass(frozen=True)
class ExecFile:
    """The executable gdb is offered: where it says it is, and its bytes."""

    path: str
    data: bytes


class Finished(Exception):
    """The client killed or detached: the server ends, status 0."""


class Session:
    """The state of one connection and the answer to each packet."""

    def __init__(
        self, target: TraceTarget, exec_file: ExecFile | None, auxv: bytes | None = None
    ) -> None:
        self.target = target
        self.exec_file = exec_file
        self.auxv = auxv
        self.ack = True
        self.last_stop = Stop("step")
        self._open_files: dict[int, bytes] = {}
        #: Packets to send before the next reply (a monitor command's output).
        self.pending: list[bytes] = []
        self._xml = target_xml().encode()
        #: The thread `Hg` chose for register reads (a tid); None: the one running.
        self.selected: int | None = None

    # --- dispatch ------------------------------------------------------------

    def answer(self, packet: bytes) -> bytes | None:
        """The reply payload (escaped as needed), or None for no reply (`k`)."""
        try:
            return self._answer(packet)
        except (ValueError, IndexError, KeyError, OverflowError):
            return b"E01"  # a known packet with malformed arguments

    def _answer(self, packet: bytes) -> bytes | None:
        head = packet[:1]
        if packet == b"?":
            return self.stop_reply(self.last_stop)
        if packet.startswith(b"qSupported"):
            return (
                b"PacketSize=%x;QStartNoAckMode+;qXfer:features:read+;"
                b"qXfer:exec-file:read+;%sReverseStep+;ReverseContinue+;swbreak+;hwbreak+"
                % (MAX_PACKET, b"qXfer:auxv:read+;" if self.auxv is not None else b"")
            )
        if packet == b"QStartNoAckMode":
            self.ack = False
            return b"OK"
        if packet == b"g":
            values = self.target.registers(thread=self.selected)
            return "".join(encode(r, values[r.name]) for r in REGISTER_TABLE).encode()
        if head == b"p":
            number = int(packet[1:], 16)
            if not 0 <= number < len(REGISTER_TABLE):
                return b"E00"
            register = REGISTER_TABLE[number]
            return encode(
                register, self.target.registers(thread=self.selected)[register.name]
            ).encode()
        if head == b"m":
            addr, length = (int(x, 16) for x in packet[1:].split(b","))
            if length == 0:
                return b""
            data = self.target.read_memory(addr, length)
            return b"E14" if data is None else data.hex().encode()
        if head in (b"G", b"P", b"M", b"X"):
            return b"E01"  # a recorded trace cannot be changed
        if packet in (b"s", b"c") or head in (b"S", b"C"):
            # `S sig` and `C sig` are gdb passing a signal on: a trace has none to pass.
            forward_step = head in (b"s", b"S")
            return self._move(self.target.step(True) if forward_step else self.target.resume(True))
        if packet in (b"bs", b"bc"):
            stop = self.target.step(False) if packet == b"bs" else self.target.resume(False)
            return self._move(stop)
        if head in (b"Z", b"z"):
            return self._point(packet)
        threads = self.target.threads
        if packet.startswith(b"Hg"):
            tid = int(packet[2:], 16) if packet[2:] not in (b"", b"-1", b"0") else None
            if tid is not None and tid not in threads.alive(self.target.state):
                return b"E01"
            self.selected = tid
            return b"OK"
        if head == b"H":
            return b"OK"  # Hc: a move always moves the whole trace
        if head == b"T":
            return b"OK" if int(packet[1:], 16) in threads.alive(self.target.state) else b"E01"
        if packet == b"qC":
            return b"QC%x" % threads.running(self.target.state)
        if packet == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % tid for tid in threads.alive(self.target.state))
        if packet == b"qsThreadInfo":
            return b"l"
        if packet == b"qAttached":
            return b"1"
        if packet.startswith(b"qSymbol"):
            return b"OK"
        if packet.startswith(b"qXfer:"):
            return self._xfer(packet)
        if packet.startswith(b"vFile:"):
            return self._file(packet)
        if packet.startswith(b"qRcmd,"):
            return self._monitor(bytes.fromhex(packet[6:].decode()).decode("utf-8", "replace"))
        if packet == b"k" or packet.startswith(b"vKill"):
            raise Finished
        if head == b"D":
            return b"OK"  # the server ends once the reply is sent
        return b""

    # --- execution -------------------------------------------------------------

    def _move(self, stop: Stop) -> bytes:
        self.last_stop = stop
        self.selected = None  # gdb follows the thread that runs at the new state
        return self.stop_reply(stop)

    def stop_reply(self, stop: Stop) -> bytes:
        values = self.target.registers()
        reason = {
            "breakpoint": b"swbreak:;",
            "watch": b"watch:%x;" % stop.addr,
            "rwatch": b"rwatch:%x;" % stop.addr,
            "awatch": b"awatch:%x;" % stop.addr,
            "begin": b"replaylog:begin;",
            "end": b"replaylog:end;",
            "step": b"",
        }[stop.why]
        expedited = b"".join(
            b"%02x:%s;"
            % (
                REGISTER_NUMBER[name],
                encode(REGISTER_TABLE[REGISTER_NUMBER[name]], values[name]).encode(),
            )
            for name in _EXPEDITED
        )
        thread = self.target.threads.running(self.target.state)
        return b"T05" + reason + b"thread:%x;" % thread + expedited

    def _point(self, packet: bytes) -> bytes:
        fields = packet[1:].split(b";")[0].split(b",")
        kind, addr, length = int(fields[0], 16), int(fields[1], 16), int(fields[2], 16)
        if not 0 <= kind <= 4 or not 0 < length <= 1 << 20:
            return b"" if kind > 4 else b"E01"
        if packet[:1] == b"z":
            self.target.remove(kind, addr, length)
            return b"OK"
        points = self.target.points
        if len(points.breakpoints) + len(points.watches) >= MAX_POINTS:
            return b"E01"
        self.target.insert(kind, addr, length)
        return b"OK"

    # --- transfers -------------------------------------------------------------

    def _xfer(self, packet: bytes) -> bytes:
        parts = packet.split(b":")
        if len(parts) != 5 or parts[2] != b"read":
            return b""
        obj, annex, span = parts[1], parts[3], parts[4]
        offset, length = (int(x, 16) for x in span.split(b","))
        if obj == b"features":
            if annex != b"target.xml":
                return b"E00"
            data = self._xml
        elif obj == b"exec-file":
            if self.exec_file is None:
                return b"E01"
            data = self.exec_file.path.encode()
        elif obj == b"auxv" and self.auxv is not None:
            data = self.auxv
        else:
            return b""
        chunk = data[offset : offset + min(length, MAX_TRANSFER)]
        more = offset + len(chunk) < len(data)
        return (b"m" if more else b"l") + escape(chunk)

    def _file(self, packet: bytes) -> bytes:
        name, _, args = packet[len(b"vFile:") :].partition(b":")
        if name == b"setfs":
            return b"F0"
        if name == b"open":
            path_hex, flags, _mode = args.split(b",")
            path = bytes.fromhex(path_hex.decode()).decode("utf-8", "replace")
            if self.exec_file is None or path != self.exec_file.path:
                return b"F-1,%x" % _ENOENT
            if int(flags, 16) & 0x3:  # O_WRONLY or O_RDWR: this server writes nothing
                return b"F-1,%x" % _EACCES
            fd = max(self._open_files, default=2) + 1
            if len(self._open_files) >= 16:
                return b"F-1,%x" % _EINVAL
            self._open_files[fd] = self.exec_file.data
            return b"F%x" % fd
        if name == b"pread":
            fd, count, offset = (int(x, 16) for x in args.split(b","))
            data = self._open_files.get(fd)
            if data is None:
                return b"F-1,%x" % _EBADF
            chunk = data[offset : offset + min(count, MAX_TRANSFER)]
            return b"F%x;" % len(chunk) + escape(chunk)
        if name == b"fstat":
            data = self._open_files.get(int(args, 16))
            if data is None:
                return b"F-1,%x" % _EBADF
            # gdb's File-I/O struct stat: big-endian, 64 bytes.
            stat = struct.pack(
                ">IIIIIIIQQQIII", 0, 0, _S_IFREG | 0o444, 1, 0, 0, 0, len(data), 4096,
                (len(data) + 511) // 512, 0, 0, 0,
            )  # fmt: skip
            return b"F%x;" % len(stat) + escape(stat)
        if name == b"close":
            return b"F0" if self._open_files.pop(int(args, 16), None) is not None else b"F-1,9"
        if name in (b"pwrite", b"unlink"):
            return b"F-1,%x" % _EACCES
        return b""

    def _monitor(self, command: str) -> bytes:
        words = command.split()
        if words == ["step"]:
            text = self.describe_position()
        elif len(words) == 2 and words[0] == "goto" and _is_integer(words[1]):
            wanted = int(words[1], 0)
            if not 0 <= wanted <= self.target.steps:
                text = f"no step {wanted}: the trace has positions 0 to {self.target.steps}"
            else:
                self.target.state = wanted
                self.last_stop = Stop("step")
                # gdb keeps the registers it read: it must be told to read them again.
                text = (
                    self.describe_position() + "\n(now `maint flush register-cache`: gdb "
                    "still shows the registers of where it stopped)"
                )
        else:
            text = (
                "monitor commands: step (where the trace is), "
                "goto N (move to step N, then `maint flush register-cache`)"
            )
        # The output goes in an `O` packet before the command's result.
        self.pending.append(b"O" + (text + "\n").encode().hex().encode())
        return b"OK"

    def describe_position(self) -> str:
        target = self.target
        state = target.state
        if state >= target.steps:
            return f"step {state} of {target.steps}: after the last instruction"
        row = target.trace.slice(state, state + 1, ["symbol", "insn"]).to_pylist()[0]
        line = target.trace.metadata.source_line(int(target.registers()["rip"] or 0))
        where = f" ({line[0]}:{line[1]})" if line else ""
        return f"step {state} of {target.steps}: {row['symbol']}: {row['insn']}{where}"


class GdbServer:
    """Listens on 127.0.0.1; serves one client at a time, refusing others meanwhile."""

    def __init__(
        self,
        target: TraceTarget,
        exec_file: ExecFile | None,
        port: int,
        auxv: bytes | None = None,
        log: TextIO = sys.stderr,
    ) -> None:
        self.target = target
        self.exec_file = exec_file
        self.auxv = auxv
        self.log = log
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind((HOST, port))
            self.listener.listen(2)
        except OSError:
            self.listener.close()
            raise
        self.port = int(self.listener.getsockname()[1])

    def close(self) -> None:
        self.listener.close()

    def serve(self) -> None:
        """Serve clients one after another until one kills or detaches."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            client: socket.socket | None = None
            reader = PacketReader()
            session: Session | None = None
            last_sent = b""
            try:
                while True:
                    for key, _ in selector.select():
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        if sock is self.listener:
                            incoming, address = self.listener.accept()
                            if client is not None and _hung_up(client):
                                # It left just as this one came: the newcomer is next.
                                selector.unregister(client)
                                client.close()
                                client = None
                            if client is not None:
                                self.log.write(
                                    f"refused {address[0]}:{address[1]}: "
                                    "a debugger is already connected\n"
                                )
                                incoming.close()
                                continue
                            client = incoming
                            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            selector.register(client, selectors.EVENT_READ)
                            # Every connection starts at step 0 with no breakpoints.
                            self.target.state = 0
                            self.target.points.breakpoints.clear()
                            self.target.points.watches.clear()
                            session = Session(self.target, self.exec_file, self.auxv)
                            reader = PacketReader()
                            self.log.write(f"gdb connected from {address[0]}:{address[1]}\n")
                            continue
                        assert client is not None and session is not None
                        try:
                            data = client.recv(65536)
                            for event in reader.feed(data):
                                sent = self._handle(client, session, event, last_sent)
                                if sent is not None:
                                    last_sent = sent
                        except OSError:  # reset, or gone while a reply was being sent
                            data = b""
                        if not data:
                            self.log.write("gdb disconnected; waiting for the next one\n")
                            selector.unregister(client)
                            client.close()
                            client = None
                            last_sent = b""
            except Finished:
                pass
            finally:
                if client is not None:
                    client.close()

    def _handle(
        self, client: socket.socket, session: Session, event: Event, last_sent: bytes
    ) -> bytes | None:
        """Answer one event; the packet sent (for a resend on `-`), or None."""
        if event.kind == "nak" and last_sent:
            client.sendall(last_sent)
            return None
        if event.kind in ("bad-checksum", "overlong"):
            if session.ack:
                client.sendall(b"-")
            return None
        if event.kind != "packet":
            return None  # acks, and Ctrl-C: every move has already ended
        if session.ack:
            client.sendall(b"+")
        payload = event.payload
        if payload[:1] in (b"X",) or payload.startswith(b"vFile:pwrite"):
            payload = unescape(payload)
        detach = payload[:1] == b"D"
        reply = session.answer(payload)
        if reply is None:
            raise Finished
        packet = frame(reply)
        for output in session.pending:
            client.sendall(frame(output))
        session.pending.clear()
        client.sendall(packet)
        if detach:
            raise Finished
        return packet


def _hung_up(client: socket.socket) -> bool:
    """Whether the peer has closed its end (without reading what is pending)."""
    try:
        return client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _is_integer(text: str) -> bool:
    try:
        int(text, 0)
    except ValueError:
        return False
    return True
