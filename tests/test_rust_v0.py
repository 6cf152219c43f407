"""Rust v0 names (`_R...`) demangled by the recorder's own parser (record/linux/rust_v0.py)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from stacktrace_lab.examples import build_example, compiler_missing
from stacktrace_lab.record.linux.elf import demangle_all
from stacktrace_lab.record.linux.rust_v0 import MAX_DEPTH, demangle_v0


@pytest.mark.parametrize(
    ("mangled", "readable"),
    [
        # A crate root and nested value paths; the crate's hash is not shown.
        ("_RNvCs1234_7mycrate3foo", "mycrate::foo"),
        ("_RNvNtCsgEmfK2I1SDS_4core3str19slice_error_fail_rt", "core::str::slice_error_fail_rt"),
        # An identifier that starts with a digit: its length ends at the `_`.
        ("_RNvC6_123foo3bar", "123foo::bar"),
        # Closures and shims: the special namespaces, with their disambiguator.
        ("_RNCNCNgCs6DXkGYLi8lr_2cc5spawn00B5_", "cc::spawn::{closure#0}::{closure#0}"),
        ("_RNCNvCs1_1a4mains_0", "a::main::{closure#1}"),
        # Inherent impl (M), trait impl (X), trait definition (Y).
        ("_RNvMsa_NtCsgEmfK2I1SDS_4core3fmtNtB5_9Formatter3pad", "<core::fmt::Formatter>::pad"),
        (
            "_RNvXs9_NtNtCsjrHSEGnQ3l9_3std2io5implsINtNtCslNYArtu3iFV_5alloc3vec3VechENtB7_5Write5flushB9_",
            "<alloc::vec::Vec<u8> as std::io::Write>::flush",
        ),
        ("_RNvYNtC1a1SNtC1b1T1f", "<a::S as b::T>::f"),
        # Generic arguments: `::<>` in a value path, `<>` in a type; `!` and backrefs.
        (
            "_RINvNtNtCsjrHSEGnQ3l9_3std3sys9backtrace26___rust_end_short_backtraceNCNvNtB6_9panicking13panic_handler0zEB6_",
            "std::sys::backtrace::__rust_end_short_backtrace::"
            "<std::panicking::panic_handler::{closure#0}, !>",
        ),
        # Binders and lifetimes, `dyn` with an associated type, `+ Send`.
        (
            "_RINvNtCsgEmfK2I1SDS_4core3ptr13drop_in_placeINtNtCslNYArtu3iFV_5alloc5boxed3Box"
            "DG0_INtNtNtB4_3ops8function2FnTRL1_INtNtCsjrHSEGnQ3l9_3std5panic13PanicHookInfoL0_EEE"
            "p6OutputuNtNtB4_6marker4SyncNtB2N_4SendEL_EEB1T_",
            "core::ptr::drop_in_place::<alloc::boxed::Box<dyn for<'a, 'b> "
            "core::ops::function::Fn<(&'a std::panic::PanicHookInfo<'b>,), Output = ()> "
            "+ core::marker::Sync + core::marker::Send>>",
        ),
        # A function pointer: unsafe, extern "C", a return type.
        ("_RINvC1a1fFUKCPhEmEB2_", 'a::f::<unsafe extern "C" fn(*const u8) -> u32>'),
        ("_RINvC1a1fFK6systemEuE", 'a::f::<extern "system" fn()>'),
        # Slices, arrays with a constant length, tuples, raw and mutable pointers.
        ("_RINvC1a1fSRQOhEB2_", "a::f::<[&&mut *mut u8]>"),
        ("_RINvC1a1fAhj10_EB2_", "a::f::<[u8; 16]>"),
        ("_RINvC1a1fThEEB2_", "a::f::<(u8,)>"),
        ("_RINvC1a1fTuhEEB2_", "a::f::<((), u8)>"),
        # Constants: integers (negative too), bool, char, &str.
        ("_RIC0Ka7f_E", "::<127>"),
        ("_RIC0Kan80_E", "::<-128>"),
        ("_RIC0Kb1_E", "::<true>"),
        ("_RIC0Kc76_E", "::<'v'>"),
        ("_RIC0KRe616263_E", '::<"abc">'),
        ("_RIC0KpE", "::<_>"),
        # A suffix after the path (an LTO copy) is kept; LLVM's `.llvm.` is dropped.
        (
            "_RNvNtNtNtNtCsjrHSEGnQ3l9_3std3sys4args4unix3imp4ARGV.0",
            "std::sys::args::unix::imp::ARGV.0",
        ),
        ("_RNvCs1234_7mycrate3foo.llvm.123ABC", "mycrate::foo"),
    ],
)
def test_v0_names_read_as_rustc_demangle_prints_them(mangled: str, readable: str) -> None:
    assert demangle_v0(mangled) == readable


def test_punycode_identifiers_are_decoded() -> None:
    # "gödel" in punycode is "gdel-5qa"; v0 writes the separator as `_`.
    assert demangle_v0("_RNvC7mycrateu8gdel_5qa") == "mycrate::gödel"


@pytest.mark.parametrize(
    "mangled",
    [
        "_R",  # nothing after the prefix
        "_Rv",  # a path starts with an uppercase tag
        "_RNvC7mycrate",  # an identifier missing
        "_RNvC99mycrate3foo",  # a length past the end
        "_RB_",  # a backreference to itself
        "_RNvC1a1b.not a suffix",  # a suffix with spaces
        "_RIC0Kb2_E",  # a bool of 2
        "_RINvC1a1fFG0_RL2_hEuEB2_",  # a lifetime outside its binder
        "malloc",
        "_ZN4core3ptr13drop_in_place17h0123456789abcdefE",
    ],
)
def test_what_is_not_a_v0_name_gives_none(mangled: str) -> None:
    assert demangle_v0(mangled) is None


def _base_62(value: int) -> str:
    """v0's encoding of a backreference's position: `_` for 0, else value-1 in base 62."""
    if value == 0:
        return "_"
    digits, value = "", value - 1
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    while True:
        digits = alphabet[value % 62] + digits
        value //= 62
        if value == 0:
            return digits + "_"


def test_hostile_names_end_without_an_error() -> None:
    deep = "_R" + "INv" * (MAX_DEPTH + 10) + "C1a1f"
    assert demangle_v0(deep) is None

    # Each tuple holds the one before twice, by backreference: the output doubles
    # with each, and is refused once past the output limit.
    def doubling(levels: int) -> str:
        inner = "INvC1a1f"
        previous = len(inner)
        inner += "h"
        for _ in range(levels):
            here = len(inner)
            inner += f"TB{_base_62(previous)}B{_base_62(previous)}E"
            previous = here
        return "_R" + inner + "E"

    assert demangle_v0(doubling(2)) == "a::f::<u8, (u8, u8), ((u8, u8), (u8, u8))>"
    assert demangle_v0(doubling(24)) is None
    assert demangle_all(["_R" + "N" * 5000]) == ["_R" + "N" * 5000]


def test_every_v0_name_of_a_rust_program_reads_as_rust_demangler_reads_it(tmp_path: Path) -> None:
    """The whole std of a dynamically linked Rust program: the same text as
    rust-demangler (the recorder's demangler before), except where that one was
    wrong: `{closure:#0}` for rustc's `{closure#0}`, `extern "C-"fn` for
    `extern "C" fn`, and names it could not read (a `for<'a>` binder)."""
    why = compiler_missing("rust-dynamic")
    if why is not None:
        pytest.skip(f"cannot build the Rust example: {why}")
    rust_demangler = pytest.importorskip("rust_demangler")
    program = build_example("rust-dynamic", tmp_path)
    with program.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        names = sorted({s.name for s in symtab.iter_symbols() if s.name.startswith("_R")})
    assert len(names) > 300
    ours = [demangle_v0(name) for name in names]
    assert all(ours), [n for n, o in zip(names, ours, strict=True) if o is None]
    agreed = fixed = 0
    for name, mine in zip(names, ours, strict=True):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                theirs = str(rust_demangler.demangle(name))
        except Exception:
            fixed += 1
            continue
        theirs = theirs.replace(":#", "#").replace('extern "C-"fn', 'extern "C" fn')
        assert mine == theirs, name
        agreed += 1
    assert agreed > 300 and fixed < 10
