/* glibc-heavy: snprintf formatting and memset/memcpy/strlen of 4 KiB buffers, whose
 * SSE2 code is full of alignment-checked movaps/movdqa (record/emulator_gaps.py).
 * Measures the C core's own alignment check (issue 20, item 4). Reproduce:
 *   gcc -static -g -O2 -o /tmp/glibc_movaps benchmarks/glibc_movaps.c
 *   /usr/bin/time -f "%U+%S s" stacktrace-lab record /tmp/glibc_movaps -o /tmp/g.parquet
 * (1,000,000 steps, the default limit.) Before the address moved into C, every
 * execution of such an instruction called Python: 117,138 calls in the first 640,055
 * steps; now none unless one is misaligned. */
#include <stdio.h>
#include <string.h>

int main(void) {
    static char src[4096], dst[4096];
    char line[128];
    unsigned long sum = 0;
    for (int i = 0; i < 1000; i++) {
        memset(src, 'a' + i % 26, sizeof src - 1 - (i % 64));
        memcpy(dst, src, sizeof src);
        sum += strlen(dst);
        snprintf(line, sizeof line, "%d %lu %s", i, sum, dst + 4000);
        sum += strlen(line);
    }
    printf("%lu\n", sum);
    return 0;
}
