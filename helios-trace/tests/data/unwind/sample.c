/*
 * The program of the captured stack sample the unwinder and symbolizer unit tests use
 * (generate.sh builds it and captures it). Same chain as tests/workloads/stackwork.c,
 * main -> loop -> handler -> leak_fn, built -O2 -fomit-frame-pointer -g, but leak_fn makes
 * the openat syscall itself (x86_64), so the instruction pointer of the sample lies in this
 * binary and the test data needs no copy of the capturing machine's libc.
 */
#include <fcntl.h>

static int leaked;

static inline long raw_openat(const char *path) {
    long ret;
    register long flags __asm__("r10") = 0;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(257L), "D"((long)AT_FDCWD), "S"(path), "d"((long)O_RDONLY), "r"(flags)
                     : "rcx", "r11", "memory");
    return ret;
}

__attribute__((noipa)) static int leak_fn(const char *path) {
    long fd = raw_openat(path); /* LEAK_OPEN */
    if (fd >= 0) leaked++;
    return (int)fd;
}

__attribute__((noipa)) static int handler(const char *path) {
    int fd = leak_fn(path);
    return fd < 0 ? fd : leaked;
}

__attribute__((noipa)) static int loop(int rounds) {
    int total = 0;
    for (int i = 0; i < rounds; i++) total += handler("/dev/null");
    return total;
}

int main(void) {
    return loop(1) > 0 ? 0 : 1;
}
