# main.s - start a worker on its own stack and switch to it, the way a
# runtime's scheduler does. Not preprocessed: `#` starts a comment here.
/* Block comments work too,
   over several lines. */

        .text
        .globl  main
        .type   main, @function
main:
        .cfi_startproc
        endbr64
        pushq   %rbp
        movq    %rsp, %rbp
        # The worker's first frame: six registers for ctx_switch to pop,
        # then the address its `ret` lands on.
        movabs  $green_top, %rax
        subq    $FRAME, %rax
        movq    worker@GOTPCREL(%rip), %rcx
        movq    %rcx, RET_SLOT(%rax)
        movq    %rax, worker_ctx(%rip)
        leaq    main_ctx(%rip), %rdi; leaq worker_ctx(%rip), %rsi
        call    ctx_switch@PLT
        movl    counter(%rip), %eax
        cmpl    $EXPECTED, %eax
        jne     1f
        popq    %rbp
        ret
1:      call    abort@PLT
        .cfi_endproc
        .size   main, .-main

        .equ    REGS, 6
        .equ    FRAME, (REGS + 1) * 8 + 8   /* registers, return address, padding */
        .set    RET_SLOT, REGS * 8
        .equ    EXPECTED, 42

        .intel_syntax noprefix
        .p2align 4
        .globl  worker
        .type   worker, @function
worker:
        endbr64
        lea     rbx, [rip + .Ltable]
        mov     eax, dword ptr [rbx + FIRST + SECOND]   // keystone alone adds only SECOND
        add     dword ptr [rip + counter], eax
        mov     ecx, 3
2:      inc     dword ptr [rip + counter]
        dec     ecx
        jnz     2b
        lea     rdi, [rip + worker_ctx]
        lea     rsi, [rip + main_ctx]
        call    ctx_switch
        ud2
        .size   worker, .-worker
        .att_syntax

        .section .rodata
        .p2align 2
.Ltable:
        .long   5, 7, 11, 39
        .equ    FIRST, 4
        .equ    SECOND, 8

        .data
        .globl  counter
        .type   counter, @object
counter:
        .long   0
        .size   counter, 4

        .bss
        .p2align 3
main_ctx:
        .zero   8
        .comm   worker_ctx, 8, 8

        .section .note.GNU-stack,"",%progbits
