"""Keystone behaviour that docs/pitfalls.md describes: if a release changes it, this fails.

Setting keystone's syntax option changes how every later Ks object in the
process reads numbers, so each probe runs in a fresh Python process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import json, sys
    from capstone import CS_ARCH_X86, CS_MODE_64, CS_OPT_SYNTAX_ATT, Cs
    from keystone import KS_ARCH_X86, KS_MODE_64, KS_OPT_SYNTAX_ATT, Ks

    def asm(source, att_option=False):
        ks = Ks(KS_ARCH_X86, KS_MODE_64)
        if att_option:
            ks.syntax = KS_OPT_SYNTAX_ATT
        encoding, _ = ks.asm(source, 0x400000)
        cs = Cs(CS_ARCH_X86, CS_MODE_64)
        cs.syntax = CS_OPT_SYNTAX_ATT
        return [f"{i.mnemonic} {i.op_str}".strip()
                for i in cs.disasm(bytes(encoding or b""), 0x400000)]

    results = {}
    for name in sys.argv[1:]:
        if name == "directive":
            results[name] = asm(".att_syntax\\nmov $32, %edx")
        elif name == "option":
            results[name] = asm("mov $32, %edx", att_option=True)
        elif name == "after-option":  # a fresh Ks, after one with the option is gone
            asm("nop", att_option=True)
            results[name] = asm("mov edx, 32")
        elif name == "vanishing-line":
            results[name] = asm(".att_syntax\\nnop\\nmov %rax,, %rbx\\nret")
        elif name == "quad-label":
            ks = Ks(KS_ARCH_X86, KS_MODE_64)
            source = ".att_syntax\\nmain: nop\\n.quad main\\n.quad later\\nlater: nop"
            encoding, _ = ks.asm(source, 0x400000)
            results[name] = [bytes(encoding).hex()]
        elif name == "absolute-load":
            results[name] = asm(".att_syntax\\nmovq 0x20000000, %rax")
        elif name == "stacktrace-lab-after-option":
            asm("nop", att_option=True)
            from stacktrace_lab.record.recorder import build_program
            from stacktrace_lab.scenario import load_scenario
            program, _ = build_program(load_scenario("first-switch"))
            cs = Cs(CS_ARCH_X86, CS_MODE_64)
            cs.syntax = CS_OPT_SYNTAX_ATT
            results[name] = [f"{i.mnemonic} {i.op_str}"
                             for i in cs.disasm(program.code, program.base)][6:8]
    print(json.dumps(results))
    """
)


def _probe(*names: str) -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *names], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_the_syntax_option_makes_numbers_hexadecimal() -> None:
    assert _probe("option")["option"] == ["movl $0x32, %edx"]
    assert _probe("directive")["directive"] == ["movl $0x20, %edx"]


def test_the_option_leaks_into_every_later_ks_object() -> None:
    assert _probe("after-option")["after-option"] == ["movl $0x32, %edx"]


def test_stacktrace_lab_keeps_index_32_even_after_the_leak() -> None:
    listing = _probe("stacktrace-lab-after-option")["stacktrace-lab-after-option"]
    assert listing == ["movq %rcx, 0x20(%rax)", "leaq 0x20(%rax), %rdx"]


def test_a_malformed_line_can_vanish_without_an_error() -> None:
    assert _probe("vanishing-line")["vanishing-line"] == ["nop", "retq"]


def test_an_absolute_load_becomes_rip_relative() -> None:
    assert _probe("absolute-load")["absolute-load"] == ["movq 0x20000000(%rip), %rax"]


def test_quad_label_works_backward_and_forward() -> None:
    # nop, .quad main (0x400000), .quad later (0x400011), nop
    (code,) = _probe("quad-label")["quad-label"]
    assert code == "90" + "0000400000000000" + "1100400000000000" + "90"
