"""The registers gdb is told about (`target.xml`), and which of them a trace knows.

gdb's x86-64 support needs the full `org.gnu.gdb.i386.core` feature (the 16
general registers, rip, eflags, the segment selectors and the x87 registers)
and `org.gnu.gdb.i386.sse`; `org.gnu.gdb.i386.linux` (orig_rax) and
`org.gnu.gdb.i386.segments` (fs_base, gs_base) are optional. The remote
register numbers, and the order of the `g` packet, are the order of this
table.

A trace records the general registers, rip and rflags of every step. The
fs and gs bases are known too: both start at 0 and only `arch_prctl` changes
them, and every system call is in the trace's metadata. Everything else (the
selectors, x87, SSE, orig_rax) was never recorded: it is sent as `xx` bytes,
which gdb shows as `<unavailable>`.

The description is written here from gdb's documented feature names and
register names (gdb manual, "Standard Target Features"), not copied from gdb.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import REGISTERS


@dataclass(frozen=True)
class Register:
    name: str
    bits: int
    type: str
    feature: str
    group: str = ""

    @property
    def size(self) -> int:
        return self.bits // 8


_CORE = "org.gnu.gdb.i386.core"
_SSE = "org.gnu.gdb.i386.sse"
_LINUX = "org.gnu.gdb.i386.linux"
_SEGMENTS = "org.gnu.gdb.i386.segments"

_GENERAL = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")
_POINTERS = {"rbp": "data_ptr", "rsp": "data_ptr"}
_X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")

REGISTER_TABLE: tuple[Register, ...] = (
    *(Register(n, 64, _POINTERS.get(n, "int64"), _CORE) for n in _GENERAL),
    *(Register(f"r{i}", 64, "int64", _CORE) for i in range(8, 16)),
    Register("rip", 64, "code_ptr", _CORE),
    Register("eflags", 32, "i386_eflags", _CORE),
    *(Register(n, 32, "int32", _CORE) for n in ("cs", "ss", "ds", "es", "fs", "gs")),
    *(Register(f"st{i}", 80, "i387_ext", _CORE) for i in range(8)),
    *(Register(n, 32, "int", _CORE, "float") for n in _X87_CONTROL),
    *(Register(f"xmm{i}", 128, "vec128", _SSE) for i in range(16)),
    Register("mxcsr", 32, "i386_mxcsr", _SSE, "vector"),
    Register("orig_rax", 64, "int", _LINUX, "system"),
    Register("fs_base", 64, "int", _SEGMENTS),
    Register("gs_base", 64, "int", _SEGMENTS),
)

REGISTER_NUMBER = {r.name: i for i, r in enumerate(REGISTER_TABLE)}

#: Trace column of each register gdb gets from the rows (eflags is rflags' low half).
TRACE_COLUMN = {name: name for name in REGISTERS if name != "rflags"} | {"eflags": "rflags"}

#: Bits of eflags and mxcsr, for gdb's `[ ZF PF ]` display.
_EFLAGS_BITS = {0: "CF", 1: "", 2: "PF", 4: "AF", 6: "ZF", 7: "SF", 8: "TF", 9: "IF"}
_EFLAGS_BITS |= {10: "DF", 11: "OF", 14: "NT", 16: "RF", 17: "VM", 18: "AC", 19: "VIF"}
_EFLAGS_BITS |= {20: "VIP", 21: "ID"}
_MXCSR_BITS = {0: "IE", 1: "DE", 2: "ZE", 3: "OE", 4: "UE", 5: "PE", 6: "DAZ", 7: "IM"}
_MXCSR_BITS |= {8: "DM", 9: "ZM", 10: "OM", 11: "UM", 12: "PM", 15: "FZ"}


def _flags(name: str, bits: dict[int, str]) -> str:
    fields = "".join(
        f'    <field name="{label}" start="{bit}" end="{bit}"/>\n' for bit, label in bits.items()
    )
    return f'  <flags id="{name}" size="4">\n{fields}  </flags>\n'


def target_xml(osabi: str = "GNU/Linux") -> str:
    """The target description gdb reads with `qXfer:features:read:target.xml`."""
    # gdb looks a type up in the feature that uses it (or its built-in types).
    sse_types = (
        _flags("i386_mxcsr", _MXCSR_BITS) + '  <vector id="v4f" type="ieee_single" count="4"/>\n'
        '  <vector id="v2d" type="ieee_double" count="2"/>\n'
        '  <vector id="v16i8" type="int8" count="16"/>\n'
        '  <vector id="v8i16" type="int16" count="8"/>\n'
        '  <vector id="v4i32" type="int32" count="4"/>\n'
        '  <vector id="v2i64" type="int64" count="2"/>\n'
        '  <union id="vec128">\n'
        '    <field name="v4_float" type="v4f"/>\n'
        '    <field name="v2_double" type="v2d"/>\n'
        '    <field name="v16_int8" type="v16i8"/>\n'
        '    <field name="v8_int16" type="v8i16"/>\n'
        '    <field name="v4_int32" type="v4i32"/>\n'
        '    <field name="v2_int64" type="v2i64"/>\n'
        '    <field name="uint128" type="uint128"/>\n'
        "  </union>\n"
    )
    parts = [
        '<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target>\n',
        "<architecture>i386:x86-64</architecture>\n",
        f"<osabi>{osabi}</osabi>\n",
    ]
    feature = None
    for number, register in enumerate(REGISTER_TABLE):
        if register.feature != feature:
            if feature is not None:
                parts.append("</feature>\n")
            feature = register.feature
            parts.append(f'<feature name="{feature}">\n')
            if feature == _CORE:
                parts.append(_flags("i386_eflags", _EFLAGS_BITS))
            elif feature == _SSE:
                parts.append(sse_types)
        group = f' group="{register.group}"' if register.group else ""
        parts.append(
            f'  <reg name="{register.name}" bitsize="{register.bits}" '
            f'type="{register.type}" regnum="{number}"{group}/>\n'
        )
    parts.append("</feature>\n</target>\n")
    return "".join(parts)


def encode(register: Register, value: int | None) -> str:
    """A register's bytes as hex, little-endian; `xx` per byte when unknown."""
    if value is None:
        return "xx" * register.size
    return (value & ((1 << register.bits) - 1)).to_bytes(register.size, "little").hex()
