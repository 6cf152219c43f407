"""The CPU state Linux gives a new process, beyond the trace's registers.

Unicorn starts with the x87 control word and MXCSR at 0 (every floating
point exception unmasked, round to nearest with denormals... as no real
process has them) and with null code and stack selectors. Linux starts a
process after `fninit` and with the default MXCSR, in user segments:

- x87 control word 0x37f (all exceptions masked, 64-bit precision, round to
  nearest), status word 0, every register empty (full tag word 0xffff);
- MXCSR 0x1f80 (all SSE exceptions masked, round to nearest);
- rflags 0x202 (IF, and the reserved bit 1);
- cs 0x33 and ss 0x2b (__USER_CS, __USER_DS), ds = es = fs = gs = 0.

Without them `printf("%f")` and libm compute differently from the real run,
and a switch routine that saves the control words (Boost's jump_fcontext)
saves 0. Scenarios start the same way as programs.
"""

from __future__ import annotations

import unicorn.x86_const as x86
from unicorn.unicorn_py3.unicorn import Uc

RFLAGS = 0x202
FPU_CONTROL = 0x37F
FPU_STATUS = 0x0
FPU_TAGS_EMPTY = 0xFFFF
MXCSR = 0x1F80
USER_CS = 0x33
USER_SS = 0x2B

_STATE = (
    (x86.UC_X86_REG_FPCW, FPU_CONTROL),
    (x86.UC_X86_REG_FPSW, FPU_STATUS),
    (x86.UC_X86_REG_FPTAG, FPU_TAGS_EMPTY),
    (x86.UC_X86_REG_MXCSR, MXCSR),
    (x86.UC_X86_REG_CS, USER_CS),
    (x86.UC_X86_REG_SS, USER_SS),
)


def start_as_linux(uc: Uc) -> None:
    """Put the state outside the trace's registers where Linux puts it (rflags is
    set with the other registers, from the machine's description)."""
    for register, value in _STATE:
        uc.reg_write(register, value)
