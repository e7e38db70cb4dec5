/*
 * fdhold: hold many open descriptors (cargo xtask bench, "memory").
 *
 *   fdhold COUNT PER_SECOND
 *
 * Creates one eventfd, waits for a line on stdin, then dup()s it COUNT times at PER_SECOND
 * (dups share one struct file, so a million of them cost the kernel little), prints "held N"
 * and keeps them open until stdin closes. The first dup is followed by a 200 ms pause: the
 * tracer's first sight of a process (its maps, unwind tables, symbols) stalls its reader, and
 * records arriving meanwhile at the full rate would overflow the ring buffer (see the
 * throughput section of BENCHMARKS.md). The soft RLIMIT_NOFILE is raised to the hard one;
 * COUNT must fit under it (the bench spreads its descriptors over enough processes).
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

int main(int argc, char **argv) {
    long count = argc > 1 ? atol(argv[1]) : 1000;
    double per_ns = (argc > 2 ? atof(argv[2]) : 100000) / 1e9;
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
    int base = eventfd(0, 0);
    if (base < 0) return 1;
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    if (count > 0 && dup(base) < 0) return 1;
    usleep(200000);
    long start = now_ns(), held = 1;
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 200000};
    while (held < count) {
        long due = 1 + (long)((now_ns() - start) * per_ns);
        if (held >= due) {
            nanosleep(&pause, NULL);
            continue;
        }
        for (; held < due && held < count; held++) {
            if (dup(base) < 0) {
                perror("dup");
                return 1;
            }
        }
    }
    printf("held %ld\n", held);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
    }
    return 0;
}
