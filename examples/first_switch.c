/* The first green-thread exercise in C: a 48-byte stack from calloc, the
 * address of hello written 16 bytes below its end (index 32), and a switch
 * that loads rsp from the context and returns into hello.
 *
 * Build it static, so stacktrace-lab can record it (see README.md here):
 *     gcc -static -O0 -g -o first_switch_c first_switch.c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { SSIZE = 48 };

/* What a thread needs to resume: for now only its stack pointer. */
struct thread_context {
    uint64_t rsp;
};

static void hello(void)
{
    puts("I LOVE WAKING UP ON A NEW STACK!");
    fflush(stdout); /* the loop below never returns to flush it */
    for (;;) {
    }
}

/* Load the new context's rsp and ret: the CPU pops the address planted at
 * the top of the new stack and continues there. */
__attribute__((noinline)) static void gt_switch(const struct thread_context *new_ctx)
{
    __asm__ volatile("mov 0x00(%0), %%rsp\n\t"
                     "ret"
                     :
                     : "r"(new_ctx)
                     : "memory");
}

int main(void)
{
    struct thread_context ctx = {0};
    uint8_t *stack = calloc(SSIZE, 1);
    if (stack == NULL)
        return 1;
    /* Index 32 = SSIZE - 16: after ret pops it, rsp % 16 == 8, as on any
     * function entry (calloc returns 16-byte aligned memory). */
    uint64_t entry = (uint64_t)(uintptr_t)hello;
    memcpy(stack + SSIZE - 16, &entry, sizeof entry);
    ctx.rsp = (uint64_t)(uintptr_t)(stack + SSIZE - 16);
    gt_switch(&ctx);
    return 0;
}
