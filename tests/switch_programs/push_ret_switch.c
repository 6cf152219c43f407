#include <stdio.h>
#include <stdlib.h>
/* A push-and-ret switch (as libco's coctx_swap): save rsp (at the return address), the
   return address and the callee-saved registers; load the other side's, step over its
   return address slot and push its resume address back there, then ret. */
struct ctx { void *rsp, *rip, *rbx, *rbp, *r12, *r13, *r14, *r15; };
void sw(struct ctx *from, struct ctx *to);
__asm__(".text\n.globl sw\n.type sw, @function\nsw:\n"
        "  movq (%rsp), %rax\n  movq %rax, 8(%rdi)\n  movq %rsp, 0(%rdi)\n"
        "  movq %rbx, 16(%rdi)\n  movq %rbp, 24(%rdi)\n  movq %r12, 32(%rdi)\n"
        "  movq %r13, 40(%rdi)\n  movq %r14, 48(%rdi)\n  movq %r15, 56(%rdi)\n"
        "  movq 16(%rsi), %rbx\n  movq 24(%rsi), %rbp\n  movq 32(%rsi), %r12\n"
        "  movq 40(%rsi), %r13\n  movq 48(%rsi), %r14\n  movq 56(%rsi), %r15\n"
        "  movq 0(%rsi), %rsp\n"
        "  leaq " STEP "(%rsp), %rsp\n"
        "  pushq 8(%rsi)\n"
        "  ret\n"
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
    co_ctx.rsp = (void *)(((unsigned long)stack + 16384 - 8) & -16UL);
    co_ctx.rip = (void *)co;
    for (int i = 0; i < 2; i++) {
        sw(&main_ctx, &co_ctx);
        puts("main");
    }
    return 0;
}
