/*
 * oloop: a traced descriptor call in a tight loop, to profile where a tracer's time goes with
 * `perf record` (BENCHMARKS.md, "The floor again, and where the time goes").
 *
 *   oloop SECONDS [socket|nest]
 *
 * Waits for a line on stdin (so a tracer attaches to this pid first), then for SECONDS makes
 * open("/dev/null")+close, or socket(AF_INET, SOCK_STREAM)+close with `socket`, with nothing in
 * between, or with `nest` a socket and, holding it, an open of /dev/null, then the two closes
 * (a server's connection and the file it serves: two calls and their closes an operation), and
 * prints how many it made and the mean ns of one ("N ops M ns per operation", its last line;
 * after its first second, when SECONDS is 1 or more, it prints "warm N", the operations made by
 * then). Unlike churn.c
 * there are no phases and no pauses: every sample perf takes of it in those seconds is of the
 * one loop (and bench/ctime.sh divides the kernel's time by N).
 * Build: gcc -O2 -fomit-frame-pointer -g (like the tests' workloads).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const char *mode = argc > 2 ? argv[2] : "open";
    int sockets = strcmp(mode, "socket") == 0, nest = strcmp(mode, "nest") == 0;
    if (argc < 2 || (argc > 2 && !sockets && !nest)) {
        fprintf(stderr, "usage: oloop SECONDS [socket|nest]\n");
        return 2;
    }
    char line[8];
    if (!fgets(line, sizeof line, stdin)) return 1;
    double start = now(), seconds = atof(argv[1]);
    long done = 0;
    int warm = 0;
    while (now() - start < seconds) {
        for (int i = 0; i < 1000; i++) {
            if (nest) {
                int held = socket(AF_INET, SOCK_STREAM, 0);
                close(open("/dev/null", O_RDONLY));
                close(held);
                continue;
            }
            int fd = sockets ? socket(AF_INET, SOCK_STREAM, 0) : open("/dev/null", O_RDONLY);
            close(fd);
        }
        done += 1000;
        if (!warm && now() - start >= 1) {
            /* bench/daemoncpu.sh's `pairs` and `serve-pairs` count from here: the tracer has
             * learned the loop's chain and started. */
            printf("warm %ld\n", done);
            fflush(stdout);
            warm = 1;
        }
    }
    printf("%ld ops %.0f ns per operation\n", done, (now() - start) * 1e9 / done);
    return 0;
}
