/*
 * switch.S - save one context's callee-saved registers and stack pointer,
 * load another's.
 *
 * Copyright (c) 2026 The stacktrace-lab authors.
 * Distributed under the MIT license (see LICENSE). It's written in the shape
 * runtimes ship their switch: #endif, #if and an unbalanced ( in a comment
 * are comment text, not code.
 */

#include "switch_defs.h"

#if defined(__x86_64__) && defined(__ELF__)

/* ctx_switch(from = %rdi, to = %rsi) */
    .text
    .globl  ctx_switch
    .hidden ctx_switch
    .type   ctx_switch, @function
    .p2align 4
ctx_switch:
    .cfi_startproc
    endbr64
    pushq %rbp
    .cfi_def_cfa_offset 16
    .cfi_offset %rbp, -16
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    SAVE_SP(%rdi)
    LOAD_SP(%rsi)
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    .cfi_def_cfa %rsp, 8
    ret
    .cfi_endproc
    .size   ctx_switch, .-ctx_switch

#elif defined(__i386__)
    .text
    .globl ctx_switch
ctx_switch:
    movl 4(%esp), %eax
    ret
#else
#error "unsupported architecture"
#endif

#if 0
/* An older version, kept for reference: it must not be assembled. */
    .globl ctx_switch_old
ctx_switch_old:
    incl counter(%rip)
    ret
#endif

    .section .note.GNU-stack,"",%progbits
