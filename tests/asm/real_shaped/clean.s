main:
    .byte 0xf3, 0x0f, 0x1e, 0xfa
    pushq %rbp
    movq %rsp, %rbp
    movabs $green_top, %rax
    subq $64, %rax
    leaq worker(%rip), %rcx
    movq %rcx, 48(%rax)
    movq %rax, worker_ctx(%rip)
    leaq main_ctx(%rip), %rdi
    leaq worker_ctx(%rip), %rsi
    call ctx_switch
    movl counter(%rip), %eax
    cmpl $42, %eax
    jne .Lfail
    popq %rbp
    ret
.Lfail:
    call abort
    .p2align 4
worker:
    .byte 0xf3, 0x0f, 0x1e, 0xfa
    leaq .Ltable(%rip), %rbx
    movl 12(%rbx), %eax
    addl %eax, counter(%rip)
    movl $3, %ecx
.Lloop:
    incl counter(%rip)
    decl %ecx
    jnz .Lloop
    leaq worker_ctx(%rip), %rdi
    leaq main_ctx(%rip), %rsi
    call ctx_switch
    ud2
    .p2align 4
ctx_switch:
    .byte 0xf3, 0x0f, 0x1e, 0xfa
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq (%rsi), %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
abort:
    hlt
    .data
    .p2align 2
.Ltable:
    .long 5, 7, 11, 39
counter:
    .long 0
    .p2align 3
main_ctx:
    .zero 8
    .p2align 3
worker_ctx:
    .zero 8
