/*
 * rate: a rate-limited event generator for the daemon throughput ladder (cargo xtask bench,
 * "throughput").
 *
 *   rate EVENTS_PER_SECOND SECONDS THREADS
 *
 * Waits for a line on stdin; then THREADS threads each open and close /dev/null WARMUP times
 * (the tracer's first sight of the process and its stacks: maps, unwind tables, symbols) and
 * it prints "warm". After a second line, the threads open and close /dev/null for SECONDS (each
 * descriptor closed after the next two are open: `open_close`),
 * together at EVENTS_PER_SECOND records (an open and a close: two records per pair), catching
 * up in bursts when behind and sleeping 100 us when ahead. Prints the pairs done and the
 * seconds they took, so the rate reached is known when the machine cannot keep up.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 500

static double pairs_per_ns;
static long duration_ns;
static pthread_barrier_t warm, go;

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* One open and one close, of the descriptor the thread opened two calls before this one: the
 * kernel keeps a process's last opens, one a slot in a group of four
 * (helios-trace-ebpf/src/pairs.rs), and matches a close of one with its open, sending neither
 * call, where this ladder measures the records the daemon takes. Closing the one opened just
 * before would match it (it and the one after are kept in two slots). Closing the one before
 * that: a close not matched is a record, which sends everything its process's slots keep first,
 * so each open is sent by the thread's next close, which comes before its own; by induction from
 * the first closes, of opens made before the kernel walked their chain, no close is matched,
 * however many threads interleave (`events.calls_paired` 0 under `helios-trace run`). */
static __thread int held[2] = {-1, -1};
static __thread int oldest;

static void open_close(void) {
    int fd = open("/dev/null", O_RDONLY);
    if (held[oldest] >= 0) close(held[oldest]);
    held[oldest] = fd;
    oldest ^= 1;
}

static void *generate(void *out) {
    for (int i = 0; i < WARMUP; i++) open_close();
    pthread_barrier_wait(&warm);
    pthread_barrier_wait(&go);
    long start = now_ns(), done = 0, elapsed;
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 100000};
    while ((elapsed = now_ns() - start) < duration_ns) {
        long due = (long)(elapsed * pairs_per_ns);
        if (done >= due) {
            nanosleep(&pause, NULL);
            continue;
        }
        for (; done < due; done++) open_close();
    }
    *(long *)out = done;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: rate EVENTS_PER_SECOND SECONDS THREADS\n");
        return 2;
    }
    double events = atof(argv[1]);
    double seconds = atof(argv[2]);
    int threads = atoi(argv[3]);
    if (threads < 1 || threads > 64) return 2;
    pairs_per_ns = events / 2.0 / threads / 1e9;
    duration_ns = (long)(seconds * 1e9);
    pthread_barrier_init(&warm, NULL, threads + 1);
    pthread_barrier_init(&go, NULL, threads + 1);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    pthread_t tids[64];
    long done[64];
    for (int i = 0; i < threads; i++) pthread_create(&tids[i], NULL, generate, &done[i]);
    pthread_barrier_wait(&warm);
    printf("warm\n");
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) return 1;
    long start = now_ns();
    pthread_barrier_wait(&go);
    long pairs = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        pairs += done[i];
    }
    printf("%ld %.3f\n", pairs, (now_ns() - start) / 1e9);
    return 0;
}
