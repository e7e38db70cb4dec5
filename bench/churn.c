/*
 * churn: the per-operation cost a tracer adds to the traced process (cargo xtask bench,
 * "overhead").
 *
 *   churn OPS GAP_US
 *
 * Forks an untraced loopback client first, then waits for a line on stdin (so a tracer can
 * attach to this pid first), then runs three phases of OPS operations each and prints the mean
 * ns of one operation per phase:
 *   open    open("/dev/null") + close
 *   socket  socket(AF_INET, SOCK_STREAM) + close
 *   accept  accept4() of a queued loopback TCP connection + close
 *   getppid getppid(), a syscall no tracer here traces: what a hook on every syscall costs
 *           the calls it does not want (the raw tracepoints run for each)
 * Each phase first runs OPS/10 untimed operations (at least 500), then pauses 1 s: the
 * tracer has seen each call site once (first sight of a process or stack costs it parsing and
 * symbolizing, on a core the workload may share: libc's compressed debug DWARF alone takes a
 * few hundred ms to load), so what is timed is the steady state.
 * Only the calls themselves are timed (CLOCK_MONOTONIC around them); after each operation the
 * loop spins until GAP_US has passed, so the tracer keeps up and what is measured is the cost
 * per operation, not how a saturated ring buffer drops records. An operation that took over
 * SLOW_NS was preempted (none of these calls takes that long on its own): on a shared machine
 * one such pause would shift the mean of a phase by up to 200 ns, so they are left out of it
 * and counted instead, and the mean of every operation, preempted ones included, follows:
 * "PHASE MEAN_NS SLOW_OPS ALL_MEAN_NS".
 *
 * The client (a child forked before the tracer attaches, so neither tracer's pid filter sees
 * it) connects BATCH sockets while the server waits, then the server accepts them. The
 * listener has SO_LINGER {1, 0}, which accepted sockets inherit (sk_clone_lock copies the
 * flags): their close sends a RST, so no TIME_WAIT builds up over the run.
 * Build: gcc -O2 -fomit-frame-pointer -g (like the tests' workloads).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256
#define SLOW_NS 100000

static long gap_ns;
/* Operations over SLOW_NS in the phase being timed. */
static long slow;
static long all_spent, all_ops;

/* A phase starts: nothing counted yet. */
static void reset(void) {
    slow = 0;
    all_spent = 0;
    all_ops = 0;
}

/* The phase's line: the mean without preempted runs, their count, the mean of every run. */
static void report(const char *phase, long mean) {
    printf("%s %ld %ld %ld\n", phase, mean, slow, all_spent / (all_ops ? all_ops : 1));
}

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void spin_until(long deadline) {
    while (now_ns() < deadline) {
    }
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* One operation of each phase; noipa keeps each a real frame of its own in the stacks. */
__attribute__((noipa)) static void open_close(void) {
    int fd = open("/dev/null", O_RDONLY);
    if (fd < 0) die("open");
    close(fd);
}

__attribute__((noipa)) static void socket_close(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    close(fd);
}

__attribute__((noipa)) static void other_call(void) {
    /* syscall(): glibc might answer getppid without entering the kernel one day. */
    if (syscall(SYS_getppid) < 0) die("getppid");
}

__attribute__((noipa)) static void accept_close(int listener) {
    int fd = accept4(listener, NULL, NULL, 0);
    if (fd < 0) die("accept4");
    close(fd);
}

/* Mean ns of `op` over `ops` runs, leaving out (and counting in `slow`) those over SLOW_NS;
 * every run, preempted or not, is also summed into `all_spent` and `all_ops`. */
#define TIMED(ops, op)                                                                       \
    ({                                                                                       \
        long spent_ = 0, timed_ = 0;                                                         \
        for (long i_ = 0; i_ < (ops); i_++) {                                                \
            long start_ = now_ns();                                                          \
            op;                                                                              \
            long end_ = now_ns();                                                            \
            all_spent += end_ - start_;                                                      \
            all_ops++;                                                                       \
            if (end_ - start_ > SLOW_NS) {                                                   \
                slow++;                                                                      \
            } else {                                                                         \
                spent_ += end_ - start_;                                                     \
                timed_++;                                                                    \
            }                                                                                \
            spin_until(end_ + gap_ns);                                                       \
        }                                                                                    \
        spent_ / (timed_ ? timed_ : 1);                                                      \
    })

/* The client: for every byte from `go`, close the previous batch and connect BATCH more. */
static void client(struct sockaddr_in addr, int go, int done) {
    int fds[BATCH];
    int open_fds = 0;
    char byte;
    while (read(go, &byte, 1) == 1) {
        for (int i = 0; i < open_fds; i++) close(fds[i]);
        for (open_fds = 0; open_fds < BATCH; open_fds++) {
            fds[open_fds] = socket(AF_INET, SOCK_STREAM, 0);
            if (fds[open_fds] < 0) die("client socket");
            if (connect(fds[open_fds], (struct sockaddr *)&addr, sizeof addr) != 0) die("connect");
        }
        if (write(done, &byte, 1) != 1) die("client write");
    }
    exit(0);
}

int main(int argc, char **argv) {
    long ops = argc > 1 ? atol(argv[1]) : 20000;
    gap_ns = (argc > 2 ? atol(argv[2]) : 10) * 1000;

    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct linger linger = {.l_onoff = 1, .l_linger = 0};
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (listener < 0 || setsockopt(listener, SOL_SOCKET, SO_LINGER, &linger, sizeof linger) != 0 ||
        bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 4096) != 0 ||
        getsockname(listener, (struct sockaddr *)&addr, &len) != 0)
        die("listener");
    int to_client[2], from_client[2];
    if (pipe(to_client) != 0 || pipe(from_client) != 0) die("pipe");
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        close(to_client[1]);
        close(from_client[0]);
        client(addr, to_client[0], from_client[1]);
    }
    close(to_client[0]);
    close(from_client[1]);

    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    long warmup = ops / 10 > 500 ? ops / 10 : 500;
    TIMED(warmup, open_close());
    TIMED(warmup, socket_close());
    for (long done = 0; done < warmup; done += BATCH) {
        char byte = 1;
        if (write(to_client[1], &byte, 1) != 1 || read(from_client[0], &byte, 1) != 1) die("batch");
        TIMED(BATCH, accept_close(listener));
    }
    usleep(1000000);
    reset();
    report("open", TIMED(ops, open_close()));
    reset();
    report("socket", TIMED(ops, socket_close()));
    reset();
    long spent = 0, timed = 0;
    for (long done = 0; done < ops; done += BATCH) {
        char byte = 1;
        if (write(to_client[1], &byte, 1) != 1 || read(from_client[0], &byte, 1) != 1) die("batch");
        long n = ops - done < BATCH ? ops - done : BATCH;
        long slow_before = slow;
        long batch_mean = TIMED(n, accept_close(listener));
        spent += batch_mean * (n - (slow - slow_before));
        timed += n - (slow - slow_before);
    }
    report("accept", spent / (timed ? timed : 1));
    TIMED(warmup, other_call());
    reset();
    report("getppid", TIMED(ops, other_call()));
    close(to_client[1]);
    return 0;
}
