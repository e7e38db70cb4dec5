/*
 * mapwork: opens files on stacks of its own whose mapping it changes in between, for the kernel
 * test of the stack mapping the programs keep per CPU (helios-trace-ebpf's stacks.rs,
 * `stack_mapping_end`; tests/integration/stacks.rs).
 *
 * Says "ready", then takes commands on stdin, one per line; one answer line on stdout
 * ("ok ..." / "err ..."):
 *   remap PATH_A PATH_B   on one CPU: open PATH_A on a 16 KiB stack at X (a mapping of its own,
 *                         run with swapcontext), then unmap it, map 20 KiB at X in its place and
 *                         open PATH_B on that, with the stack pointer of the call below X + 16 KiB
 *                         and the return addresses of its callers above it: "ok fd_a fd_b".
 *                         A stack mapping still taken to end at X + 16 KiB would cut PATH_B's
 *                         chain there; its whole chain runs up to remapped_entry.
 *   exit
 *
 * Build: gcc -O2 -fomit-frame-pointer -g mapwork.c -o mapwork (noipa keeps each function a real
 * frame under its own name).
 */
#define _GNU_SOURCE
#include <alloca.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#define FIRST_STACK (16 * 1024)
#define SECOND_STACK (20 * 1024)

static ucontext_t main_context, stack_context;
static const char *path_to_open;
static char *old_end; /* X + FIRST_STACK */
static int opened_fd;

__attribute__((noipa)) static int open_here(const char *path) {
    /* A frame of its own about 1 KiB deep: its caller's return address lies that far above
     * the stack pointer of the open. */
    volatile char frame[1024];
    frame[0] = 0;
    int fd = open(path, O_RDONLY); /* MAP_OPEN */
    return fd + frame[0];
}

__attribute__((noipa)) static void first_entry(void) {
    opened_fd = open_here(path_to_open);
}

/* Place open_here's frame across old_end: the stack pointer of the open below it, the return
 * address into this function above it. */
__attribute__((noipa)) static void straddle(void) {
    char here;
    intptr_t above = (char *)&here - (old_end + 256);
    if (above > 0) {
        volatile char *pad = alloca(above);
        pad[0] = 0;
    }
    opened_fd = open_here(path_to_open);
}

__attribute__((noipa)) static void remapped_entry(void) {
    straddle();
    /* Not a tail call: remapped_entry stays a frame of the chain. */
    __asm__ volatile("" ::: "memory");
}

static int run_on(char *stack, size_t size, void (*entry)(void)) {
    if (getcontext(&stack_context) != 0) return -1;
    stack_context.uc_stack.ss_sp = stack;
    stack_context.uc_stack.ss_size = size;
    stack_context.uc_link = &main_context;
    makecontext(&stack_context, entry, 0);
    if (swapcontext(&main_context, &stack_context) != 0) return -1;
    return opened_fd;
}

static void remap(const char *path_a, const char *path_b) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) {
        printf("err sched_setaffinity\n");
        return;
    }
    char *stack = mmap(NULL, SECOND_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (stack == MAP_FAILED || munmap(stack + FIRST_STACK, SECOND_STACK - FIRST_STACK) != 0) {
        printf("err mmap\n");
        return;
    }
    path_to_open = path_a;
    int fd_a = run_on(stack, FIRST_STACK, first_entry); /* CALL_FIRST */
    /* The same address, a larger mapping: its end moves from X + 16 KiB to X + 20 KiB. */
    old_end = stack + FIRST_STACK;
    if (munmap(stack, FIRST_STACK) != 0 ||
        mmap(stack, SECOND_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) !=
            stack) {
        printf("err remap\n");
        return;
    }
    path_to_open = path_b;
    int fd_b = run_on(stack, SECOND_STACK, remapped_entry); /* CALL_REMAPPED */
    printf("ok %d %d\n", fd_a, fd_b);
}

int main(void) {
    printf("ready\n");
    fflush(stdout);
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        char command[16], a[2048], b[2048];
        int fields = sscanf(line, "%15s %2047s %2047s", command, a, b);
        if (fields >= 1 && strcmp(command, "exit") == 0) break;
        if (fields == 3 && strcmp(command, "remap") == 0)
            remap(a, b);
        else
            printf("err unknown command\n");
        fflush(stdout);
    }
    return 0;
}
