#include <stdio.h>
#include <stdlib.h>
/* A make-context that returns the context (Boost.Context's make_fcontext/jump_fcontext
   technique, in our own code): make_ctx lays out a context at the top of a stack and
   returns a pointer to it in rax, with a trampoline as the first resume address and the
   context function in rbx's slot; the caller keeps the pointer in memory (ctx[]).
   jump_ctx saves the callee-saved registers under its return address, returns the old
   stack pointer as the context left, loads rsp from its first argument, restores and
   jumps to the resume address. The trampoline pushes a (null) return address and jumps
   to the context function. FRAME is where make_ctx puts the context: -0x40 enters the
   function with rsp % 16 == 8, as a call would. With -DFRAME_PUSH the trampoline also
   pushes a frame pointer, as Boost's layout needs one more slot: the context must then
   be 8 bytes off the grid (-0x48, Boost's own `lea`), and a multiple of 16 is wrong. */
#ifdef FRAME_PUSH
#define TRAMPOLINE "  pushq %rbp\n  pushq %rbp\n  jmp *%rbx\n"
#else
#define TRAMPOLINE "  pushq %rbp\n  jmp *%rbx\n"
#endif
typedef void *fctx;
typedef struct {
    fctx from;
    void *data;
} transfer;
fctx make_ctx(void *top, void (*fn)(transfer));
transfer jump_ctx(fctx to, void *data);
__asm__(".text\n.globl make_ctx\n.type make_ctx, @function\nmake_ctx:\n"
        "  movq %rdi, %rax\n  andq $-16, %rax\n"
        "  leaq " FRAME "(%rax), %rax\n"
        "  movq %rsi, 0x28(%rax)\n"
        "  movq $0, 0x30(%rax)\n"
        "  leaq trampoline(%rip), %rcx\n  movq %rcx, 0x38(%rax)\n"
        "  ret\n"
        "trampoline:\n" TRAMPOLINE
        ".size make_ctx, .-make_ctx\n"
        ".globl jump_ctx\n.type jump_ctx, @function\njump_ctx:\n"
        "  leaq -0x38(%rsp), %rsp\n"
        "  movq %r12, 0x8(%rsp)\n  movq %r13, 0x10(%rsp)\n  movq %r14, 0x18(%rsp)\n"
        "  movq %r15, 0x20(%rsp)\n  movq %rbx, 0x28(%rsp)\n  movq %rbp, 0x30(%rsp)\n"
        "  movq %rsp, %rax\n"
        "  movq %rdi, %rsp\n"
        "  movq 0x38(%rsp), %r8\n"
        "  movq 0x8(%rsp), %r12\n  movq 0x10(%rsp), %r13\n  movq 0x18(%rsp), %r14\n"
        "  movq 0x20(%rsp), %r15\n  movq 0x28(%rsp), %rbx\n  movq 0x30(%rsp), %rbp\n"
        "  leaq 0x40(%rsp), %rsp\n"
        "  movq %rsi, %rdx\n  movq %rax, %rdi\n"
        "  jmp *%r8\n"
        ".size jump_ctx, .-jump_ctx\n");
fctx ctx[2];
static void co(transfer t) {
    for (;;) {
        puts("co");
        t = jump_ctx(t.from, t.data);
    }
}
int main(void) {
    char *stack = malloc(16384);
    ctx[1] = make_ctx(stack + 16384, co);
    for (int i = 0; i < 2; i++) {
        transfer t = jump_ctx(ctx[1], NULL);
        ctx[1] = t.from;
        puts("main");
    }
    return 0;
}
