/*
 * openloop: the per-open cost helios-trace adds, by stack mode (bench/stack-modes.sh).
 *
 *   openloop ITERATIONS DEPTH GAP_US
 *
 * Waits for a line on stdin (so a tracer can attach to its pid first), then opens and closes
 * /dev/null ITERATIONS times from DEPTH nested calls (each with a 256-byte frame, so the
 * stack under the open is about DEPTH * 288 bytes deep), one open every GAP_US microseconds
 * (a rate the tracer keeps up with: what is measured is the cost per open, not how a
 * saturated ring buffer drops), and prints the mean ns of one open+close.
 * Build like the tests' workloads: gcc -O2 -fomit-frame-pointer -g.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long gap_ns;

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* Total ns spent in open+close. */
__attribute__((noipa)) static long churn(long iterations) {
    long spent = 0;
    for (long i = 0; i < iterations; i++) {
        long start = now_ns();
        int fd = open("/dev/null", O_RDONLY);
        if (fd >= 0) close(fd);
        long end = now_ns();
        spent += end - start;
        while (now_ns() < end + gap_ns) {
        }
    }
    return spent;
}

__attribute__((noipa)) static long nest(int depth, long iterations) {
    volatile char frame[256];
    memset((char *)frame, depth, sizeof frame);
    if (depth <= 0) return churn(iterations);
    return nest(depth - 1, iterations) + frame[depth % sizeof frame] * 0;
}

int main(int argc, char **argv) {
    long iterations = argc > 1 ? atol(argv[1]) : 100000;
    int depth = argc > 2 ? atoi(argv[2]) : 0;
    gap_ns = (argc > 3 ? atol(argv[3]) : 20) * 1000;
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    long spent = nest(depth, iterations);
    printf("%ld\n", spent / (iterations ? iterations : 1));
    return 0;
}
