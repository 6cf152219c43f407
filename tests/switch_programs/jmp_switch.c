#include <stdio.h>
#include <stdlib.h>
/* A jmp-resume switch (as minicoro, libaco and marl switch): push the callee-saved
   registers, save rsp and a resume address, load the other side's and jump. */
struct ctx { void *rsp, *rip; };
void sw(struct ctx *from, struct ctx *to);
__asm__(".text\n.globl sw\n.type sw, @function\nsw:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  leaq " SAVED "(%rsp), %rax\n"
        "  movq %rax, 0(%rdi)\n"
        "  leaq 1f(%rip), %rax\n"
        "  movq %rax, 8(%rdi)\n"
        "  movq 0(%rsi), %rsp\n"
        "  jmpq *8(%rsi)\n"
        "1:\n  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n  ret\n"
        ".size sw, .-sw\n");
static struct ctx main_ctx, co_ctx;
static void co(void) {
    for (;;) {
        puts("co");
        sw(&co_ctx, &main_ctx);
    }
}
int main(void) {
    char *stack = malloc(16384);
    co_ctx.rsp = (void *)((((unsigned long)stack + 16384) & -16UL) - 8);
    co_ctx.rip = (void *)co;
    for (int i = 0; i < 2; i++) {
        sw(&main_ctx, &co_ctx);
        puts("main");
    }
    return 0;
}
