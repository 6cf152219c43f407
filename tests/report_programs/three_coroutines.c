/* Three coroutines on glibc's makecontext/swapcontext, round robin from main.
 * Each swapcontext loads the next stack's rsp and returns through an address
 * the context holds (a planted return): 3 entries and 3 x 2 resumes, 9 in all
 * on the coroutine stacks, plus the switches back to main. */
#include <stdio.h>
#include <ucontext.h>

#define STACK_BYTES 16384
#define ROUNDS 3

static ucontext_t main_context, contexts[3];
/* Three arrays, not one, so each is a stack region of its own. The gaps keep
 * them further apart than the recorder's overflow reach (64 KiB): a stack
 * right under another would count as that one's overflow. Built with
 * -fno-toplevel-reorder, so they sit in this order. */
#define GAP_BYTES (80 << 10)
static char stack_a[STACK_BYTES] __attribute__((aligned(16)));
static char gap_ab[GAP_BYTES] __attribute__((used));
static char stack_b[STACK_BYTES] __attribute__((aligned(16)));
static char gap_bc[GAP_BYTES] __attribute__((used));
static char stack_c[STACK_BYTES] __attribute__((aligned(16)));
static char *const stacks[3] = {stack_a, stack_b, stack_c};
static volatile long work[3];

static void coroutine(int id) {
    for (int round = 0; round < ROUNDS; round++) {
        work[id] += id * 10 + round;
        swapcontext(&contexts[id], &main_context);
    }
}

int main(void) {
    for (int id = 0; id < 3; id++) {
        getcontext(&contexts[id]);
        contexts[id].uc_stack.ss_sp = stacks[id];
        contexts[id].uc_stack.ss_size = STACK_BYTES;
        contexts[id].uc_link = &main_context;
        makecontext(&contexts[id], (void (*)(void))coroutine, 1, id);
    }
    for (int round = 0; round < ROUNDS; round++)
        for (int id = 0; id < 3; id++)
            swapcontext(&main_context, &contexts[id]);
    printf("%ld %ld %ld\n", work[0], work[1], work[2]);
    return 0;
}
