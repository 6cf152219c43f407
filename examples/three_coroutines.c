/* Three coroutines, two ways of switching, in one program.
 *
 * `ping` and `pong` run on a hand-written switch, the tutorial's technique
 * grown up: `switch_stacks` pushes the callee-saved registers, stores rsp,
 * loads the other coroutine's rsp, pops its registers and `ret`s through the
 * return address found on the new stack. A coroutine's first resume returns
 * into its entry function, whose address `start` planted on its fresh stack.
 *
 * `tick` runs on glibc's makecontext/swapcontext (ucontext.h): the same idea,
 * with the registers kept in a ucontext_t instead of on the stack.
 *
 * main resumes them round robin, ROUNDS times each; every coroutine adds to
 * its counter and yields back to main. It prints `ping 3 pong 6 tick 9`.
 *
 * Build (static, debug info; -fno-toplevel-reorder keeps the stacks and the
 * gaps between them in the order written):
 *     gcc -static -O1 -g -fno-toplevel-reorder three_coroutines.c -o three_coroutines
 */
#include <stdio.h>
#include <ucontext.h>

#define STACK_BYTES 16384
#define ROUNDS 3

/* Three arrays, not one, so each is a stack region of its own; the gaps keep
 * them further apart than the recorder's overflow reach (64 KiB), so no stack
 * reads as the overflow of the one above it. */
#define GAP_BYTES (80 << 10)
static char ping_stack[STACK_BYTES] __attribute__((aligned(16)));
static char gap_1[GAP_BYTES] __attribute__((used));
static char pong_stack[STACK_BYTES] __attribute__((aligned(16)));
static char gap_2[GAP_BYTES] __attribute__((used));
static char tick_stack[STACK_BYTES] __attribute__((aligned(16)));

/* void switch_stacks(void **save_rsp, void *load_rsp): save this coroutine's
 * callee-saved registers and rsp, resume the one whose rsp is `load_rsp`. */
void switch_stacks(void **save_rsp, void *load_rsp);
__asm__(".text\n"
        ".globl switch_stacks\n"
        ".type switch_stacks, @function\n"
        "switch_stacks:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size switch_stacks, .-switch_stacks\n");

static void *main_rsp, *ping_rsp, *pong_rsp;
static ucontext_t main_context, tick_context;
static volatile long ping_count, pong_count, tick_count;

/* A fresh stack for switch_stacks: six zeroed registers for it to pop, then
 * `entry` for its `ret`, so that `entry` starts with rsp % 16 == 8, as if it
 * had been called. Returns the rsp to load. */
static void *start(char *stack, void (*entry)(void)) {
    void **top = (void **)(stack + STACK_BYTES);
    top[-1] = 0;              /* entry's own return address: it never returns */
    top[-2] = (void *)entry;  /* the planted return */
    for (int i = 3; i <= 8; i++)
        top[-i] = 0;          /* r15 r14 r13 r12 rbx rbp */
    return &top[-8];
}

static void ping(void) {
    for (;;) {
        ping_count += 1;
        switch_stacks(&ping_rsp, main_rsp);
    }
}

static void pong(void) {
    for (;;) {
        pong_count += 2;
        switch_stacks(&pong_rsp, main_rsp);
    }
}

static void tick(void) {
    for (;;) {
        tick_count += 3;
        swapcontext(&tick_context, &main_context);
    }
}

int main(void) {
    ping_rsp = start(ping_stack, ping);
    pong_rsp = start(pong_stack, pong);
    getcontext(&tick_context);
    tick_context.uc_stack.ss_sp = tick_stack;
    tick_context.uc_stack.ss_size = STACK_BYTES;
    tick_context.uc_link = &main_context;
    makecontext(&tick_context, tick, 0);

    for (int round = 0; round < ROUNDS; round++) {
        switch_stacks(&main_rsp, ping_rsp);
        switch_stacks(&main_rsp, pong_rsp);
        swapcontext(&main_context, &tick_context);
    }
    printf("ping %ld pong %ld tick %ld\n", ping_count, pong_count, tick_count);
    return 0;
}
