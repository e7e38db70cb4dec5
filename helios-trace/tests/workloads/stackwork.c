/*
 * stackwork: a workload with a known call chain for helios-trace's stack tests.
 *
 * main -> loop -> handler -> leak_fn -> open() (glibc's wrapper), built by the tests with
 * -O2 -fomit-frame-pointer -g: no frame pointers anywhere, so only DWARF unwinding (.eh_frame)
 * recovers the chain. noipa keeps each function a real frame under its own name (no inlining,
 * no cloning into leak_fn.constprop.0), and every caller uses the result after the call, so no
 * call becomes a tail call.
 *
 * Commands on stdin, one per line; one answer line on stdout ("ok ..." / "err ..."):
 *   leak N PATH     open PATH N times through the chain and keep the descriptors: "ok fd..."
 *   leakone PATH    open PATH once from another call site in handler: "ok fd"
 *   deep N PATH     open PATH once through N + 1 frames of `descend` between handler and
 *                   leak_fn (a chain as deep as wanted): "ok fd"
 *   wide N PATH     the same through N + 1 frames of `widen`, each over 512 bytes of stack (a
 *                   chain whose walk reads far up the stack): "ok fd"
 *   via N PATH      open PATH once from `opener_N` (N from 0 to 64), 65 functions that each make
 *                   the call through syscall(): 65 chains with the same first frame and each its
 *                   own caller: "ok fd"
 *   gap             whether the main thread's stack has a page the process never touched in
 *                   the gap the kernel leaves below the argument strings: "ok 1" or "ok 0"
 *   forkleak PATH   fork a child that opens PATH through the chain, forks a grandchild that
 *                   inherits the descriptor and waits, and exits at once: "ok <grandchild pid>"
 *   churn N PATH    open PATH N times through leak_fn from a call site of its own in handler,
 *                   closing each at once: "ok"
 *   nest N PATH     N times, as a server serves two connections at once: open PATH twice from
 *                   two call sites (the connections) and, holding them, PATH again from a third
 *                   (the file), then close the three, the last opened first: "ok"
 *   exit
 *
 * Build: gcc -O2 -fomit-frame-pointer -g stackwork.c -o stackwork
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int leaked;

__attribute__((noipa)) static int leak_fn(const char *path) {
    int fd = open(path, O_RDONLY); /* LEAK_OPEN: the tests look for this line */
    if (fd >= 0) leaked++;
    return fd;
}

/* 65 callers of the syscall, each its own function (noipa: none folded into another), through
 * glibc's syscall(): one function that makes it on every glibc, where open() may make it in a
 * cancellation helper of its own, which would be every opener's first frame and caller alike. */
#define OPENERS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23) X(24) X(25) X(26) X(27) X(28) X(29) X(30) X(31) X(32) X(33) X(34) X(35) X(36) X(37) X(38) X(39) X(40) X(41) X(42) X(43) X(44) X(45) X(46) X(47) X(48) X(49) X(50) X(51) X(52) X(53) X(54) X(55) X(56) X(57) X(58) X(59) X(60) X(61) X(62) X(63) X(64)
#define OPENER(n)                                                                           \
    __attribute__((noipa)) static int opener_##n(const char *path) {                        \
        int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY);                        \
        if (fd >= 0) leaked++;                                                              \
        return fd;                                                                          \
    }
OPENERS(OPENER)
#define OPENER_REF(n) opener_##n,
static int (*const openers[])(const char *) = {OPENERS(OPENER_REF)};

static int descended;

/* N frames of itself, then leak_fn: the chain grows with N, each extra frame returning to the
 * same address. The count after the call keeps it from being a tail call, which would leave one
 * frame however deep the recursion. */
__attribute__((noipa)) static int descend(int frames, const char *path) {
    int fd = frames > 0 ? descend(frames - 1, path) : leak_fn(path);
    if (fd >= 0) descended++;
    return fd;
}

static int widened;

/* `descend` with a frame of over 512 bytes: the array is volatile and indexed by the count, so
 * the compiler keeps all of it. */
__attribute__((noipa)) static int widen(int frames, const char *path) {
    volatile char room[512];
    room[frames & 511] = 1;
    int fd = frames > 0 ? widen(frames - 1, path) : leak_fn(path);
    if (fd >= 0) widened += room[frames & 511];
    return fd;
}

static char **main_argv;

/* Whether a whole page lies in the gap between the platform string and the argument strings
 * of the main thread's stack, and is not present: the kernel moves the vectors down by a random
 * amount below the strings (fs/binfmt_elf.c, create_elf_tables: arch_align_stack, up to 8 KiB)
 * and writes the platform string first below that; nothing writes in between. mincore(2) says
 * whether the page is there. */
static int untouched_gap_page(void) {
    const char *platform = (const char *)getauxval(AT_PLATFORM);
    if (platform == NULL) return 0;
    unsigned long low = (unsigned long)platform + strlen(platform) + 1;
    unsigned long high = (unsigned long)main_argv[0];
    unsigned long page = (unsigned long)sysconf(_SC_PAGESIZE);
    unsigned long first = (low + page - 1) & ~(page - 1);
    unsigned char present;
    if (high < first + page || mincore((void *)first, page, &present) != 0) return 0;
    return (present & 1) == 0;
}

__attribute__((noipa)) static int handler(const char *command, const char *path, int count) {
    if (strcmp(command, "leak") == 0) {
        printf("ok");
        for (int i = 0; i < count; i++) {
            int fd = leak_fn(path); /* CALL_LEAK */
            if (fd < 0) {
                printf(" err %s", strerror(errno));
                break;
            }
            printf(" %d", fd);
        }
        printf("\n");
        fflush(stdout);
        return leaked;
    }
    if (strcmp(command, "churn") == 0) {
        for (int i = 0; i < count; i++) {
            int fd = leak_fn(path); /* CALL_CHURN */
            if (fd < 0) return -1;
            close(fd);
        }
        printf("ok\n");
        fflush(stdout);
        return leaked;
    }
    if (strcmp(command, "nest") == 0) {
        for (int i = 0; i < count; i++) {
            int held = leak_fn(path); /* CALL_NEST_HELD */
            if (held < 0) return -1;
            int second = leak_fn(path); /* CALL_NEST_SECOND */
            if (second < 0) return -1;
            int inner = leak_fn(path); /* CALL_NEST_INNER */
            if (inner < 0) return -1;
            close(inner);
            close(second);
            close(held);
        }
        printf("ok\n");
        fflush(stdout);
        return leaked;
    }
    if (strcmp(command, "leakone") == 0) {
        int fd = leak_fn(path); /* CALL_LEAKONE */
        if (fd < 0) return -1;
        printf("ok %d\n", fd);
        fflush(stdout);
        return leaked;
    }
    int wide = strcmp(command, "wide") == 0;
    if (wide || strcmp(command, "deep") == 0) {
        int fd = wide ? widen(count, path) : descend(count, path);
        if (fd < 0) return -1;
        printf("ok %d\n", fd);
        fflush(stdout);
        return wide ? widened : descended;
    }
    if (strcmp(command, "via") == 0) {
        if (count < 0 || count >= (int)(sizeof openers / sizeof openers[0])) return -1;
        int fd = openers[count](path);
        if (fd < 0) return -1;
        printf("ok %d\n", fd);
        fflush(stdout);
        return leaked;
    }
    if (strcmp(command, "forkleak") == 0) {
        pid_t child = fork();
        if (child < 0) return -1;
        if (child == 0) {
            /* The child leaks through the same chain, hands the descriptor to a grandchild
             * and is gone before helios-trace reads its events. */
            int fd = leak_fn(path); /* CALL_FORKLEAK */
            if (fd < 0) _exit(1);
            pid_t grandchild = fork();
            if (grandchild == 0) {
                close(STDOUT_FILENO);
                pause();
                _exit(0);
            }
            printf("ok %d\n", (int)grandchild);
            fflush(stdout);
            _exit(0);
        }
        int status;
        waitpid(child, &status, 0);
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
    }
    printf("err unknown command %s\n", command);
    fflush(stdout);
    return -1;
}

__attribute__((noipa)) static int loop(void) {
    char line[512];
    int handled = 0;
    while (fgets(line, sizeof line, stdin)) {
        char command[32], path[400];
        int count = 1;
        line[strcspn(line, "\n")] = 0;
        if (strcmp(line, "exit") == 0) break;
        if (strcmp(line, "gap") == 0) {
            printf("ok %d\n", untouched_gap_page());
            fflush(stdout);
            handled++;
            continue;
        }
        if (sscanf(line, "leak %d %399s", &count, path) == 2) {
            if (handler("leak", path, count) < 0) return -1; /* CALL_HANDLER */
        } else if (sscanf(line, "deep %d %399s", &count, path) == 2) {
            if (handler("deep", path, count) < 0) return -1;
        } else if (sscanf(line, "wide %d %399s", &count, path) == 2) {
            if (handler("wide", path, count) < 0) return -1;
        } else if (sscanf(line, "churn %d %399s", &count, path) == 2) {
            if (handler("churn", path, count) < 0) return -1;
        } else if (sscanf(line, "nest %d %399s", &count, path) == 2) {
            if (handler("nest", path, count) < 0) return -1;
        } else if (sscanf(line, "via %d %399s", &count, path) == 2) {
            if (handler("via", path, count) < 0) return -1;
        } else if (sscanf(line, "%31s %399s", command, path) == 2) {
            if (handler(command, path, count) < 0) return -1;
        } else {
            printf("err bad line\n");
            fflush(stdout);
        }
        handled++;
    }
    return handled;
}

int main(int argc, char **argv) {
    (void)argc;
    main_argv = argv;
    printf("ready\n");
    fflush(stdout);
    int handled = loop(); /* CALL_LOOP */
    return handled < 0 ? 1 : 0;
}
