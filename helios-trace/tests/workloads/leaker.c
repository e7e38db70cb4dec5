/*
 * leaker: a workload that leaks descriptors from call sites a test can name, for the
 * exporter's tests (helios-trace serve).
 *
 * Each call site issues its syscall itself (inline `syscall` / `svc`), so the user
 * instruction pointer the kernel records at the syscall is inside that site's function, and
 * `nm` on this binary says which function a captured frame belongs to. Built with frame
 * pointers so the rest of the stack unwinds too.
 *
 * Same protocol as fdwork: "ready" at start, then one command per line on stdin, answered by
 * "ok [numbers...]" or "err <text>":
 *   files N     N files opened by leak_file()           -> their fds
 *   sockets N   N TCP sockets created by leak_socket()  -> their fds
 *   spread N    one file from each of N distinct call sites (N <= 64) -> their fds
 *   forks N     N children, one after another, each opening a file in leak_child() and
 *               exiting without closing it                -> their pids
 *   close FD
 *   exit
 *
 * Build: gcc -O2 -g -fno-omit-frame-pointer leaker.c -o leaker
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static char scratch_dir[4096] = "/tmp";

static inline __attribute__((always_inline)) long raw3(long nr, long a, long b, long c) {
    long ret;
#if defined(__x86_64__)
    register long r10 __asm__("r10") = 0;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = nr;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    ret = x0;
#else
#error "leaker supports x86_64 and aarch64"
#endif
    return ret;
}

static inline __attribute__((always_inline)) int raw_open(const char *path) {
    return (int)raw3(SYS_openat, AT_FDCWD, (long)path, O_CREAT | O_RDWR);
}

static void scratch_path(char *out, size_t size, const char *what, int n) {
    snprintf(out, size, "%s/%s-%d-%d", scratch_dir, what, getpid(), n);
}

__attribute__((noinline)) int leak_file(int n) {
    char path[4200];
    scratch_path(path, sizeof path, "file", n);
    return raw_open(path);
}

__attribute__((noinline)) int leak_socket(void) {
    return (int)raw3(SYS_socket, AF_INET, SOCK_STREAM, 0);
}

__attribute__((noinline)) int leak_child(int n) {
    char path[4200];
    scratch_path(path, sizeof path, "child", n);
    return raw_open(path);
}

#define SITE(n) \
    __attribute__((noinline)) static int spread_##n(const char *path) { return raw_open(path); }
#define SITES8(a) SITE(a##0) SITE(a##1) SITE(a##2) SITE(a##3) SITE(a##4) SITE(a##5) SITE(a##6) SITE(a##7)
SITES8(1) SITES8(2) SITES8(3) SITES8(4) SITES8(5) SITES8(6) SITES8(7) SITES8(8)
#define REF8(a) spread_##a##0, spread_##a##1, spread_##a##2, spread_##a##3, \
                spread_##a##4, spread_##a##5, spread_##a##6, spread_##a##7
static int (*const spread_sites[64])(const char *) = {
    REF8(1), REF8(2), REF8(3), REF8(4), REF8(5), REF8(6), REF8(7), REF8(8)};

static void reply_numbers(int n, const long *numbers) {
    printf("ok");
    for (int i = 0; i < n; i++) printf(" %ld", numbers[i]);
    putchar('\n');
    fflush(stdout);
}

static void fail(const char *what) {
    printf("err %s\n", what);
    fflush(stdout);
}

static int counter;

int main(int argc, char **argv) {
    if (argc > 1) snprintf(scratch_dir, sizeof scratch_dir, "%s", argv[1]);
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[256];
    static long out[4096];
    while (fgets(line, sizeof line, stdin)) {
        char cmd[32] = "";
        long n = 0;
        sscanf(line, "%31s %ld", cmd, &n);
        if (n < 0 || n > 4096) {
            fail("count out of range");
        } else if (!strcmp(cmd, "files")) {
            for (long i = 0; i < n; i++) out[i] = leak_file(counter++);
            reply_numbers((int)n, out);
        } else if (!strcmp(cmd, "sockets")) {
            for (long i = 0; i < n; i++) out[i] = leak_socket();
            reply_numbers((int)n, out);
        } else if (!strcmp(cmd, "spread")) {
            if (n > 64) { fail("at most 64 sites"); continue; }
            for (long i = 0; i < n; i++) {
                char path[4200];
                scratch_path(path, sizeof path, "spread", counter++);
                out[i] = spread_sites[i](path);
            }
            reply_numbers((int)n, out);
        } else if (!strcmp(cmd, "forks")) {
            for (long i = 0; i < n; i++) {
                pid_t pid = fork();
                if (pid == 0) _exit(leak_child(counter) < 0);
                int status = 0;
                waitpid(pid, &status, 0);
                out[i] = pid;
                counter++;
            }
            reply_numbers((int)n, out);
        } else if (!strcmp(cmd, "close")) {
            if (close((int)n) < 0) fail("close"); else reply_numbers(0, out);
        } else if (!strcmp(cmd, "exit")) {
            return 0;
        } else {
            fail("unknown command");
        }
    }
    return 0;
}
