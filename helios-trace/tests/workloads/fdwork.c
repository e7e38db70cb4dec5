/*
 * fdwork: a scriptable workload for helios-trace's kernel tests.
 *
 * It reads one command per line on stdin, performs exactly the descriptor syscalls the
 * command names (through the raw syscall when glibc has no wrapper), and answers one line on
 * stdout: "ok [numbers...]" or "err <errno text>". Descriptors stay open until a command
 * closes them, so a test can compare helios-trace's table with /proc/PID/fd at any point.
 *
 * Build: gcc -O2 -g -pthread fdwork.c -o fdwork
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fanotify.h>
#include <linux/io_uring.h>
#include <linux/openat2.h>
#include <linux/perf_event.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

static const char *self_path;
static char scratch_dir[4096] = "/tmp";

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void reply_fds(int n, const int *fds) {
    printf("ok");
    for (int i = 0; i < n; i++) printf(" %d", fds[i]);
    putchar('\n');
    fflush(stdout);
}

static int fail(void) {
    reply("err %s", strerror(errno));
    return -1;
}

#define CHECK(expr) do { if ((expr) < 0) { fail(); return; } } while (0)

static int loopback_listener(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 128) < 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) < 0)
        return -1;
    *port = ntohs(addr.sin_port);
    return fd;
}

static int loopback_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) return -1;
    return fd;
}

/* --- threads: open or close from a thread other than the main one --- */
struct thread_job { int open_count; int close_fd; int fds[64]; };

static void *thread_main(void *arg) {
    struct thread_job *job = arg;
    for (int i = 0; i < job->open_count && i < 64; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/thread-%d-%d", scratch_dir, gettid(), i);
        job->fds[i] = open(path, O_CREAT | O_RDWR, 0600);
    }
    if (job->close_fd >= 0) close(job->close_fd);
    return NULL;
}

static void run_thread(int open_count, int close_fd) {
    struct thread_job job = {.open_count = open_count, .close_fd = close_fd};
    pthread_t thread;
    if (pthread_create(&thread, NULL, thread_main, &job) != 0) { reply("err pthread_create"); return; }
    pthread_join(thread, NULL);
    reply_fds(open_count, job.fds);
}

/* --- a path unmapped before its open returns --- */
struct unmapper { pid_t opener; char *page; const char *fifo; };

/* Once the opener waits in openat (its path read, the FIFO without a writer: fs/fifo.c,
 * fifo_open), unmap the page that holds its path, then open the FIFO for writing, which lets
 * the open return: at its exit the path is no longer there to read. */
static void *unmap_then_write(void *arg) {
    struct unmapper *u = arg;
    char at[64], line[256];
    snprintf(at, sizeof at, "/proc/self/task/%d/syscall", u->opener);
    /* At most 10 s: an open that did not wait (the path not a FIFO, an error) is let go. */
    for (int tries = 0; tries < 10000; tries++) {
        FILE *f = fopen(at, "r");
        int waiting = f && fgets(line, sizeof line, f) && atoi(line) == SYS_openat;
        if (f) fclose(f);
        if (waiting) break;
        usleep(1000);
    }
    munmap(u->page, 4096);
    int w = open(u->fifo, O_WRONLY);
    if (w >= 0) close(w);
    return NULL;
}

static int open_unmapped(const char *fifo) {
    if (mkfifo(fifo, 0600) < 0 && errno != EEXIST) return -1;
    char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) return -1;
    snprintf(page, 4096, "%s", fifo);
    struct unmapper u = {.opener = gettid(), .page = page, .fifo = fifo};
    pthread_t thread;
    if (pthread_create(&thread, NULL, unmap_then_write, &u) != 0) {
        munmap(page, 4096);
        return -1;
    }
    int fd = (int)syscall(SYS_openat, AT_FDCWD, page, O_RDONLY);
    pthread_join(thread, NULL);
    return fd;
}

/* --- background workers: a busy site, a slow leak, a server that forgets to close --- */
struct churn_job { long rate, leak_ms, pool; };

static long elapsed_ms(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) * 1000 + (now.tv_nsec - start->tv_nsec) / 1000000;
}

/* Every 10 ms, rate/100 opens of one scratch file, each closed at once, except: the first
 * `pool` are kept (a pool opened at start and held), and one more is kept every `leak_ms`
 * (0: never). All through the one open() call below, so it is one call site. */
static volatile int churn_stop;
static volatile long churn_opens;

static void *churn_main(void *arg) {
    struct churn_job job = *(struct churn_job *)arg;
    free(arg);
    char path[4200];
    snprintf(path, sizeof path, "%s/churn-bg", scratch_dir);
    long per_tick = job.rate > 0 ? job.rate / 100 : 1000, kept = 0, leaked = 0;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (!churn_stop) {
        long due = job.leak_ms > 0 ? elapsed_ms(&start) / job.leak_ms : 0;
        for (long i = 0; i < per_tick || kept < job.pool || leaked < due; i++) {
            int fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
            if (fd < 0) continue;
            __sync_fetch_and_add(&churn_opens, 1);
            if (kept < job.pool) kept++;
            else if (leaked < due) leaked++;
            else close(fd);
        }
        /* rate 0: as fast as the machine goes (a flood). */
        if (job.rate > 0) usleep(10000);
    }
    return NULL;
}

/* A server whose handler never closes what it accepted, even after the client hung up. */
static void *serve_main(void *arg) {
    int listener = (int)(long)arg;
    for (;;) {
        if (accept(listener, NULL, NULL) < 0 && errno != EINTR) break;
    }
    return NULL;
}

/* A steady leak until the descriptor limit: one kept open every 1/hz s; the CLOCK_BOOTTIME
 * time of the first EMFILE is published for `emfile-at`. */
static volatile long long first_emfile_ns;
static long leak_hz;

static void *limit_main(void *arg) {
    (void)arg;
    char path[4200];
    snprintf(path, sizeof path, "%s/limit-bg", scratch_dir);
    for (;;) {
        if (open(path, O_CREAT | O_RDWR, 0600) < 0 && errno == EMFILE) {
            struct timespec now;
            clock_gettime(CLOCK_BOOTTIME, &now);
            first_emfile_ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
            return NULL;
        }
        usleep(1000000 / leak_hz);
    }
}

static void start_thread(void *(*main)(void *), void *arg) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, main, arg) != 0) { reply("err pthread_create"); return; }
    pthread_detach(thread);
}

/* --- SCM_RIGHTS --- */
/* Descriptors one message passes at most, and messages of one recvmmsg: more than the tracer's
 * kernel walk lists (16 descriptors a call, 8 messages of a recvmmsg), to reach its limits. */
#define MAX_RIGHTS 24
#define MAX_BATCH 12

/* One message of a byte and, when n > 0, an SCM_RIGHTS control message of n descriptors. */
static int send_rights(int sock, int n, const int *fds) {
    char data = 'x';
    struct iovec iov = {.iov_base = &data, .iov_len = 1};
    _Alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * MAX_RIGHTS)];
    memset(control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (n > 0) {
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * n);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * n);
    }
    return sendmsg(sock, &msg, 0) < 0 ? -1 : 0;
}

static void send_fds(int sock, int n, const int *fds) {
    CHECK(send_rights(sock, n, fds));
    reply("ok");
}

static int collect_rights(struct msghdr *msg, int *out, int max) {
    int n = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (int i = 0; i < count && n < max; i++) memcpy(&out[n++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        }
    }
    return n;
}

/* Room for a recvmmsg (or a recvmsg of `mm[0].msg_hdr`) of up to MAX_BATCH datagrams: a few
 * bytes each, and control messages of the sender's credentials and MAX_RIGHTS descriptors. */
struct batch {
    struct mmsghdr mm[MAX_BATCH];
    struct iovec iov[MAX_BATCH];
    char data[MAX_BATCH][8];
    _Alignas(struct cmsghdr) char control[MAX_BATCH][CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(sizeof(int) * MAX_RIGHTS)];
};

static void batch_ready(struct batch *b) {
    memset(b->mm, 0, sizeof b->mm);
    for (int m = 0; m < MAX_BATCH; m++) {
        b->iov[m] = (struct iovec){.iov_base = b->data[m], .iov_len = sizeof b->data[m]};
        b->mm[m].msg_hdr = (struct msghdr){.msg_iov = &b->iov[m], .msg_iovlen = 1, .msg_control = b->control[m],
                                           .msg_controllen = sizeof b->control[m]};
    }
}

static void recv_fds(int sock, int use_mmsg) {
    struct batch b;
    batch_ready(&b);
    int fds[MAX_RIGHTS];
    if (use_mmsg) {
        CHECK(recvmmsg(sock, b.mm, 1, 0, NULL));
    } else {
        CHECK(recvmsg(sock, &b.mm[0].msg_hdr, 0));
    }
    reply_fds(collect_rights(&b.mm[0].msg_hdr, fds, MAX_RIGHTS), fds);
}

/* Over a new datagram socketpair, one message per count of `counts` (that many copies of fd 0;
 * 0: a byte alone), then one recvmmsg of them all, with MSG_CMSG_CLOEXEC; replies with every
 * descriptor received. The receiving end has SO_PASSCRED: each message comes with an
 * SCM_CREDENTIALS control message before its SCM_RIGHTS one (net/core/scm.c,
 * __scm_recv_common). The pair is closed after. */
static void mmsg_fds(const int *counts, int messages) {
    int pair[2], copies[MAX_RIGHTS] = {0}, on = 1;
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, pair));
    CHECK(setsockopt(pair[1], SOL_SOCKET, SO_PASSCRED, &on, sizeof on));
    for (int m = 0; m < messages; m++) CHECK(send_rights(pair[0], counts[m], copies));
    struct batch b;
    batch_ready(&b);
    int got, fds[MAX_BATCH * MAX_RIGHTS], n = 0;
    CHECK(got = recvmmsg(pair[1], b.mm, messages, MSG_CMSG_CLOEXEC, NULL));
    for (int m = 0; m < got; m++) n += collect_rights(&b.mm[m].msg_hdr, fds + n, MAX_RIGHTS);
    close(pair[0]);
    close(pair[1]);
    reply_fds(n, fds);
}

/* Over a new datagram socketpair, n bytes sent and each received by recvmsg with room for
 * control messages, then 4 more received by one recvmmsg: none passes a descriptor, each comes
 * with its sender's credentials (SO_PASSCRED), a control message of another kind. */
static void datagrams(long n) {
    int pair[2], on = 1;
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, pair));
    CHECK(setsockopt(pair[1], SOL_SOCKET, SO_PASSCRED, &on, sizeof on));
    struct batch b;
    batch_ready(&b);
    for (long i = 0; i < n; i++) {
        CHECK(send_rights(pair[0], 0, NULL));
        CHECK(recvmsg(pair[1], &b.mm[0].msg_hdr, 0));
        b.mm[0].msg_hdr.msg_controllen = sizeof b.control[0];
    }
    for (int m = 0; m < 4; m++) CHECK(send_rights(pair[0], 0, NULL));
    CHECK(recvmmsg(pair[1], b.mm, 4, 0, NULL));
    close(pair[0]);
    close(pair[1]);
    reply("ok");
}

/* A UDP socket on loopback sends itself n datagrams (MAX_BATCH at most), received by one
 * recvmmsg, `rounds` times: more messages than the tracer's kernel walk takes, on a socket that
 * cannot pass descriptors. The socket is closed after. */
static void udp_batch(int n, long rounds) {
    int sock;
    CHECK(sock = socket(AF_INET, SOCK_DGRAM, 0));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    CHECK(bind(sock, (struct sockaddr *)&addr, sizeof addr));
    CHECK(getsockname(sock, (struct sockaddr *)&addr, &len));
    struct batch b;
    for (long r = 0; r < rounds; r++) {
        for (int m = 0; m < n; m++) CHECK(sendto(sock, "x", 1, 0, (struct sockaddr *)&addr, len));
        batch_ready(&b);
        int got;
        CHECK(got = recvmmsg(sock, b.mm, n, 0, NULL));
        if (got != n) { close(sock); reply("err got %d of %d", got, n); return; }
    }
    close(sock);
    reply("ok");
}

static void handle(char *line) {
    char cmd[64] = "";
    long a = -1, b = -1, c = -1;
    char word[4096] = "";
    sscanf(line, "%63s", cmd);
    int fds[64];
    int fd;

    if (!strcmp(cmd, "files")) {             /* files N: open N scratch files */
        sscanf(line, "%*s %ld", &a);
        for (long i = 0; i < a && i < 64; i++) {
            char path[4200];
            snprintf(path, sizeof path, "%s/file-%d-%ld-%ld", scratch_dir, getpid(), (long)random(), i);
            CHECK(fds[i] = openat(AT_FDCWD, path, O_CREAT | O_RDWR, 0600));
        }
        reply_fds((int)a, fds);
    } else if (!strcmp(cmd, "churn")) {      /* churn N: open+close N times, as fast as possible */
        sscanf(line, "%*s %ld", &a);
        char path[4200];
        snprintf(path, sizeof path, "%s/churn", scratch_dir);
        for (long i = 0; i < a; i++) {
            CHECK(fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600));
            close(fd);
        }
        reply("ok");
    } else if (!strcmp(cmd, "hold")) {       /* hold N: open N files in a burst and keep them */
        sscanf(line, "%*s %ld", &a);
        char path[4200];
        snprintf(path, sizeof path, "%s/held", scratch_dir);
        for (long i = 0; i < a; i++) CHECK(open(path, O_CREAT | O_RDWR, 0600));
        reply("ok");
    } else if (!strcmp(cmd, "open")) {       /* open PATH [cloexec] */
        sscanf(line, "%*s %4095s %ld", word, &a);
        CHECK(fd = open(word, O_RDONLY | O_CREAT | (a == 1 ? O_CLOEXEC : 0), 0600));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "open-as-is")) { /* open-as-is PATH: no O_CREAT or O_DIRECTORY (a FIFO does not wait: O_NONBLOCK) */
        sscanf(line, "%*s %4095s", word);
        CHECK(fd = open(word, O_RDONLY | O_NONBLOCK));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "mkfifo")) {     /* mkfifo PATH */
        sscanf(line, "%*s %4095s", word);
        CHECK(mkfifo(word, 0600));
        reply("ok");
    } else if (!strcmp(cmd, "open-unmapped")) { /* open-unmapped FIFO: its path unmapped before the open returns */
        sscanf(line, "%*s %4095s", word);
        CHECK(fd = open_unmapped(word));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "creat")) {
        sscanf(line, "%*s %4095s", word);
        CHECK(fd = creat(word, 0600));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "openat2")) {    /* openat2 PATH: O_CLOEXEC through struct open_how */
        sscanf(line, "%*s %4095s", word);
        struct open_how how = {.flags = O_RDONLY | O_CLOEXEC};
        CHECK(fd = syscall(SYS_openat2, AT_FDCWD, word, &how, sizeof how));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "opendir")) {
        sscanf(line, "%*s %4095s", word);
        CHECK(fd = open(word, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "openat-rel")) { /* openat-rel DIRFD NAME */
        sscanf(line, "%*s %ld %4095s", &a, word);
        CHECK(fd = openat((int)a, word, O_RDWR | O_CREAT, 0600));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "handle")) {     /* handle PATH: name_to_handle_at + open_by_handle_at */
        sscanf(line, "%*s %4095s", word);
        struct file_handle *h = malloc(sizeof *h + MAX_HANDLE_SZ);
        h->handle_bytes = MAX_HANDLE_SZ;
        int mount_id;
        CHECK(name_to_handle_at(AT_FDCWD, word, h, &mount_id, 0));
        int mount_fd = open("/", O_RDONLY | O_DIRECTORY);
        fd = open_by_handle_at(mount_fd, h, O_RDONLY);
        close(mount_fd);
        free(h);
        CHECK(fd);
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "sockets")) {    /* sockets N */
        sscanf(line, "%*s %ld", &a);
        for (long i = 0; i < a && i < 64; i++) CHECK(fds[i] = socket(AF_INET, SOCK_STREAM, 0));
        reply_fds((int)a, fds);
    } else if (!strcmp(cmd, "accept")) {     /* accept N: listener, N clients, N accepted (alternating accept/accept4) */
        sscanf(line, "%*s %ld", &a);
        int port;
        int listener;
        CHECK(listener = loopback_listener(&port));
        fds[0] = listener;
        int n = 1;
        for (long i = 0; i < a && n + 2 <= 64; i++) {
            CHECK(fds[n++] = loopback_connect(port));
            if (i % 2) CHECK(fds[n++] = accept4(listener, NULL, NULL, SOCK_CLOEXEC));
            else CHECK(fds[n++] = accept(listener, NULL, NULL));
        }
        reply_fds(n, fds);
    } else if (!strcmp(cmd, "socketpair")) {
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, fds));
        reply_fds(2, fds);
    } else if (!strcmp(cmd, "pipe")) {
        CHECK(pipe(fds));
        reply_fds(2, fds);
    } else if (!strcmp(cmd, "pipe2")) {
        CHECK(pipe2(fds, O_CLOEXEC));
        reply_fds(2, fds);
    } else if (!strcmp(cmd, "dup")) {
        sscanf(line, "%*s %ld", &a);
        CHECK(fd = dup((int)a));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "dup2")) {
        sscanf(line, "%*s %ld %ld", &a, &b);
        CHECK(fd = syscall(SYS_dup2, (int)a, (int)b));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "dup3")) {
        sscanf(line, "%*s %ld %ld", &a, &b);
        CHECK(fd = dup3((int)a, (int)b, O_CLOEXEC));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "fcntl-dupfd")) { /* fcntl-dupfd FD MIN [cloexec] */
        sscanf(line, "%*s %ld %ld %ld", &a, &b, &c);
        CHECK(fd = fcntl((int)a, c == 1 ? F_DUPFD_CLOEXEC : F_DUPFD, (int)b));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "setfd")) {       /* setfd FD 0|1 */
        sscanf(line, "%*s %ld %ld", &a, &b);
        CHECK(fcntl((int)a, F_SETFD, b ? FD_CLOEXEC : 0));
        reply("ok");
    } else if (!strcmp(cmd, "ioctl-cloexec")) { /* ioctl-cloexec FD 0|1 */
        sscanf(line, "%*s %ld %ld", &a, &b);
        CHECK(ioctl((int)a, b ? FIOCLEX : FIONCLEX));
        reply("ok");
    } else if (!strcmp(cmd, "eventfd")) {
        CHECK(fd = syscall(SYS_eventfd2, 0, EFD_CLOEXEC));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "epoll")) {
        CHECK(fd = epoll_create1(EPOLL_CLOEXEC));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "timerfd")) {
        CHECK(fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "signalfd")) {
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGUSR2);
        CHECK(fd = signalfd(-1, &mask, SFD_CLOEXEC));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "inotify")) {
        CHECK(fd = inotify_init1(IN_CLOEXEC));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "memfd")) {
        CHECK(fd = memfd_create("fdwork-memfd", MFD_CLOEXEC));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "pidfd")) {       /* pidfd PID */
        sscanf(line, "%*s %ld", &a);
        CHECK(fd = syscall(SYS_pidfd_open, (pid_t)a, 0));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "getfd")) {       /* getfd PIDFD TARGETFD */
        sscanf(line, "%*s %ld %ld", &a, &b);
        CHECK(fd = syscall(SYS_pidfd_getfd, (int)a, (int)b, 0));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "fanotify")) {
        CHECK(fd = syscall(SYS_fanotify_init, FAN_CLASS_NOTIF | FAN_CLOEXEC, O_RDONLY));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "userfaultfd")) {
        CHECK(fd = syscall(SYS_userfaultfd, O_CLOEXEC));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "perf")) {
        struct perf_event_attr attr = {.type = PERF_TYPE_SOFTWARE, .size = sizeof attr,
                                       .config = PERF_COUNT_SW_TASK_CLOCK, .disabled = 1,
                                       .exclude_kernel = 1, .exclude_hv = 1};
        CHECK(fd = syscall(SYS_perf_event_open, &attr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "io_uring")) {
        struct io_uring_params params;
        memset(&params, 0, sizeof params);
        CHECK(fd = syscall(SYS_io_uring_setup, 4, &params));
        reply_fds(1, &fd);
    } else if (!strcmp(cmd, "send-fds")) {    /* send-fds SOCK FD [FD...]: MAX_RIGHTS at most */
        int sock, n = 0, consumed;
        char *p = line;
        sscanf(p, "%*s %d%n", &sock, &consumed);
        p += consumed;
        while (n < MAX_RIGHTS && sscanf(p, "%d%n", &fds[n], &consumed) == 1) { n++; p += consumed; }
        send_fds(sock, n, fds);
    } else if (!strcmp(cmd, "recv-fds")) {    /* recv-fds SOCK */
        sscanf(line, "%*s %ld", &a);
        recv_fds((int)a, 0);
    } else if (!strcmp(cmd, "recvmmsg-fds")) {
        sscanf(line, "%*s %ld", &a);
        recv_fds((int)a, 1);
    } else if (!strcmp(cmd, "datagrams")) {   /* datagrams N: see datagrams */
        sscanf(line, "%*s %ld", &a);
        datagrams(a);
    } else if (!strcmp(cmd, "udp-batch")) {   /* udp-batch N ROUNDS: see udp_batch */
        sscanf(line, "%*s %ld %ld", &a, &b);
        if (a < 1 || a > MAX_BATCH || b < 1) { reply("err count"); return; }
        udp_batch((int)a, b);
    } else if (!strcmp(cmd, "mmsg-fds")) {    /* mmsg-fds N [N...]: see mmsg_fds (MAX_BATCH at most, MAX_RIGHTS each) */
        int counts[MAX_BATCH], messages = 0, consumed;
        char *p = line;
        sscanf(p, "%*s%n", &consumed);
        p += consumed;
        while (messages < MAX_BATCH && sscanf(p, "%d%n", &counts[messages], &consumed) == 1) {
            if (counts[messages] < 0 || counts[messages] > MAX_RIGHTS) { reply("err count"); return; }
            messages++;
            p += consumed;
        }
        mmsg_fds(counts, messages);
    } else if (!strcmp(cmd, "ia32-read-dup")) { /* ia32-read-dup FD: ia32 read(FD, buf, 0) and dup(FD) */
#if defined(__x86_64__)
        /* Through int $0x80, the ia32 syscalls of a 64-bit process (arch/x86/entry/syscalls/
         * syscall_32.tbl): read is 3 (native close), dup is 41 (native socket). The ia32 ABI
         * cuts the buffer pointer to 32 bits, so the read asks for 0 bytes and never uses it. */
        long r;
        char byte;
        sscanf(line, "%*s %ld", &a);
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(3L), "b"(a), "c"(&byte), "d"(0L) : "memory");
        if (r < 0) { errno = (int)-r; reply("err %s", strerror(errno)); return; }
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(41L), "b"(a) : "memory");
        if (r < 0) { errno = (int)-r; reply("err %s", strerror(errno)); return; }
        fd = (int)r;
        reply_fds(1, &fd);
#else
        reply("err not x86_64");
#endif
    } else if (!strcmp(cmd, "close")) {
        sscanf(line, "%*s %ld", &a);
        CHECK(close((int)a));
        reply("ok");
    } else if (!strcmp(cmd, "close-range")) { /* close-range FIRST LAST [cloexec] */
        sscanf(line, "%*s %ld %ld %ld", &a, &b, &c);
        CHECK(syscall(SYS_close_range, (unsigned)a, (unsigned)b, c == 1 ? CLOSE_RANGE_CLOEXEC : 0));
        reply("ok");
    } else if (!strcmp(cmd, "thread-open")) { /* thread-open N: a new thread opens N files and exits */
        sscanf(line, "%*s %ld", &a);
        run_thread((int)a, -1);
    } else if (!strcmp(cmd, "thread-close")) {/* thread-close FD: a new thread closes FD */
        sscanf(line, "%*s %ld", &a);
        run_thread(0, (int)a);
    } else if (!strcmp(cmd, "fork")) {        /* fork: a child that idles with the inherited table */
        pid_t child = fork();
        CHECK(child);
        if (child == 0) {
            for (;;) pause();
        }
        reply("ok %d", child);
    } else if (!strcmp(cmd, "fork-exec")) {   /* fork-exec: a child that execs "fdwork idle" */
        pid_t child = fork();
        CHECK(child);
        if (child == 0) {
            execl(self_path, self_path, "idle", (char *)NULL);
            _exit(127);
        }
        reply("ok %d", child);
    } else if (!strcmp(cmd, "exec")) {        /* exec: replace this image with a fresh fdwork */
        fflush(stdout);
        execl(self_path, self_path, scratch_dir, (char *)NULL);
        fail();
    } else if (!strcmp(cmd, "kill")) {        /* kill PID: kill and reap a child */
        sscanf(line, "%*s %ld", &a);
        kill((pid_t)a, SIGKILL);
        waitpid((pid_t)a, NULL, 0);
        reply("ok");
    } else if (!strcmp(cmd, "churn-bg")) {   /* churn-bg RATE LEAK_MS POOL: in the background */
        struct churn_job *job = malloc(sizeof *job);
        job->rate = 0; job->leak_ms = 0; job->pool = 0;
        sscanf(line, "%*s %ld %ld %ld", &job->rate, &job->leak_ms, &job->pool);
        /* A new run after a churn-stop: counts start again from zero. */
        churn_stop = 0;
        churn_opens = 0;
        start_thread(churn_main, job);
        reply("ok");
    } else if (!strcmp(cmd, "churn-stop")) { /* churn-stop: stop the churn-bg workers; opens since they started */
        churn_stop = 1;
        usleep(50000);
        reply("ok %ld", churn_opens);
    } else if (!strcmp(cmd, "spawn-churn")) { /* spawn-churn N: N children open a file and exit (every 10th execs true) */
        sscanf(line, "%*s %ld", &a);
        char path[4200];
        snprintf(path, sizeof path, "%s/spawned", scratch_dir);
        long failed = 0;
        for (long i = 0; i < a; i++) {
            pid_t child = fork();
            if (child == 0) {
                open(path, O_CREAT | O_RDWR, 0600);
                if (i % 10 == 0) execl("/bin/true", "true", (char *)NULL);
                _exit(0);
            }
            if (child < 0 || waitpid(child, NULL, 0) < 0) failed++;
        }
        reply("ok %ld", failed);
    } else if (!strcmp(cmd, "leak-to-limit")) { /* leak-to-limit HZ LIMIT: lower RLIMIT_NOFILE, leak */
        sscanf(line, "%*s %ld %ld", &a, &b);
        struct rlimit limit = {.rlim_cur = (rlim_t)b, .rlim_max = (rlim_t)b};
        CHECK(setrlimit(RLIMIT_NOFILE, &limit));
        leak_hz = a > 0 ? a : 1;
        start_thread(limit_main, NULL);
        reply("ok");
    } else if (!strcmp(cmd, "emfile-at")) {  /* emfile-at: boot-time ns of the first EMFILE, or 0 */
        reply("ok %lld", first_emfile_ns);
    } else if (!strcmp(cmd, "unread")) {     /* unread N BYTES: N accepted sockets with BYTES unread */
        sscanf(line, "%*s %ld %ld", &a, &b);
        int port, listener;
        CHECK(listener = loopback_listener(&port));
        static char payload[1 << 20];
        memset(payload, 'u', sizeof payload);
        int n = 0;
        for (long i = 0; i < a && n < 64; i++) {
            int client;
            CHECK(client = loopback_connect(port));
            CHECK(fds[n++] = accept(listener, NULL, NULL));
            for (long sent = 0; sent < b;) {
                long chunk = b - sent < (long)sizeof payload ? b - sent : (long)sizeof payload;
                ssize_t w = write(client, payload, chunk);
                if (w <= 0) break;
                sent += w;
            }
        }
        close(listener);
        reply_fds(n, fds);
    } else if (!strcmp(cmd, "serve-bg")) {   /* serve-bg: listen on loopback, accept and never close */
        int port;
        CHECK(fd = loopback_listener(&port));
        start_thread(serve_main, (void *)(long)fd);
        reply("ok %d", port);
    } else if (!strcmp(cmd, "exit")) {        /* exit [CODE] */
        sscanf(line, "%*s %ld", &a);
        reply("ok");
        exit(a < 0 ? 0 : (int)a);
    } else {
        reply("err unknown command %s", cmd);
    }
}

int main(int argc, char **argv) {
    self_path = argv[0];
    if (argc > 1 && !strcmp(argv[1], "idle")) {
        for (;;) pause();
    }
    if (argc > 1) snprintf(scratch_dir, sizeof scratch_dir, "%s", argv[1]);
    srandom(getpid());
    reply("ready %d", getpid());
    char line[8192];
    while (fgets(line, sizeof line, stdin)) handle(line);
    return 0;
}
