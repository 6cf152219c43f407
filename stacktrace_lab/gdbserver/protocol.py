"""The GDB remote serial protocol's framing: `$payload#checksum`, acks, escapes.

A packet is `$`, the payload, `#` and two hex digits of the payload's byte sum
modulo 256. Inside binary payloads (`X`, `vFile:pwrite`, and the data of
`qXfer` and `vFile:pread` replies) the bytes `$`, `#`, `}` and `*` are sent as
`}` followed by the byte xor 0x20. Outside a packet, `+` and `-` acknowledge
the last packet (until no-ack mode), and a lone 0x03 is gdb's Ctrl-C.

`PacketReader` turns the bytes of a connection into events without trusting
them: garbage between packets is skipped, a packet with a wrong checksum is
an event of its own (answered `-`), and a packet that never ends is dropped
once it passes `MAX_PACKET` bytes, so a client cannot make the server hold
unbounded input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Largest packet accepted from a client, and announced in `qSupported`
#: (`PacketSize`, hexadecimal there): gdb never sends a longer one.
MAX_PACKET = 0x4000

_ESCAPED = frozenset(b"$#}*")


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary data as it goes inside a packet."""
    if not any(b in _ESCAPED for b in data):
        return data
    out = bytearray()
    for b in data:
        if b in _ESCAPED:
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """The bytes a binary payload stands for (a trailing lone `}` is dropped)."""
    if b"}" not in data:
        return data
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == 0x7D:
            if i + 1 < len(data):
                out.append(data[i + 1] ^ 0x20)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """`payload` (already escaped where binary) as one packet on the wire."""
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


EventKind = Literal["packet", "bad-checksum", "interrupt", "ack", "nak", "overlong"]


@dataclass(frozen=True)
class Event:
    kind: EventKind
    payload: bytes = b""


class PacketReader:
    """Bytes in, protocol events out, whatever the bytes are."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._in_packet = False
        self._hash_at = -1

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for b in data:
            if not self._in_packet:
                if b == ord("$"):
                    self._in_packet = True
                    self._hash_at = -1
                    self._buffer.clear()
                elif b == 0x03:
                    events.append(Event("interrupt"))
                elif b == ord("+"):
                    events.append(Event("ack"))
                elif b == ord("-"):
                    events.append(Event("nak"))
                # Anything else between packets is noise: skipped.
                continue
            # The packet ends two characters after its `#`; a `#` inside a
            # binary payload is always escaped, so the first one ends it.
            if self._hash_at < 0 and b == ord("#"):
                self._hash_at = len(self._buffer)
            self._buffer.append(b)
            if self._hash_at >= 0 and len(self._buffer) == self._hash_at + 3:
                events.append(self._finish(self._hash_at))
            elif len(self._buffer) > MAX_PACKET + 3:
                self._in_packet = False
                self._buffer.clear()
                events.append(Event("overlong"))
        return events

    def _finish(self, hash_at: int) -> Event:
        self._in_packet = False
        payload = bytes(self._buffer[:hash_at])
        given = bytes(self._buffer[hash_at + 1 :])
        self._buffer.clear()
        try:
            ok = int(given, 16) == checksum(payload)
        except ValueError:
            ok = False
        return Event("packet", payload) if ok else Event("bad-checksum", payload)
