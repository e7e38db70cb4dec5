/*
 * rawcalls: every descriptor syscall helios-trace decodes, issued by its own number.
 *
 * libc wrappers hide most of the table: glibc turns open, pipe, eventfd, epoll_create,
 * signalfd and inotify_init into openat, pipe2, eventfd2, epoll_create1, signalfd4 and
 * inotify_init1, while musl (every Alpine image) issues SYS_open and friends directly. This
 * program calls syscall(SYS_<name>, ...) for each, so a test sees every decode arm reached by
 * a real call whichever libc built it. It is built twice by the tests: with gcc (glibc) and
 * with musl-gcc (static), and therefore includes only headers both libcs have; the kernel
 * structures it needs (open_how, file_handle, perf_event_attr, io_uring_params) are spelled
 * out below from the kernel's uapi headers.
 *
 * Protocol (as fdwork.c): "ready" once, then one command per line on stdin, one reply line on
 * stdout.
 *   list        "ok NAME NAME ..." every call below
 *   NAME        issue that call (plus whatever it needs first, also raw); "ok FD ..." the
 *               descriptors it made, or "err <errno text>"
 *   close FD    SYS_close
 *   exit        exit
 *
 * The unit test `every_call_in_the_table_has_a_raw_workload_command` (src/sys/syscalls.rs)
 * reads the CALLS table of this file: a call added to the syscall table without a command
 * here fails it.
 *
 * Build: gcc -O2 -Wall rawcalls.c -o rawcalls; musl-gcc -static -O2 -Wall rawcalls.c -o rawcalls.musl
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

/* Numbers older libc headers may lack (x86_64, arch/x86/entry/syscalls/syscall_64.tbl). */
#if defined(__x86_64__)
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#endif

/* include/uapi/linux/openat2.h */
struct open_how_v0 { uint64_t flags, mode, resolve; };
/* include/linux/fs.h: struct file_handle, with room for MAX_HANDLE_SZ (128) bytes */
struct file_handle_128 { uint32_t handle_bytes; int32_t handle_type; unsigned char f_handle[128]; };
/* include/uapi/linux/perf_event.h: PERF_ATTR_SIZE_VER0 is 64 bytes; type, size, config,
 * then (at byte 40) the flag bits: disabled is bit 0, exclude_kernel bit 5, exclude_hv bit 6. */
struct perf_event_attr_v0 { uint32_t type, size; uint64_t config, sample_period, sample_type, read_format, flags;
                            uint32_t wakeup_events, bp_type; uint64_t bp_addr; };
_Static_assert(sizeof(struct perf_event_attr_v0) == 64, "PERF_ATTR_SIZE_VER0");
/* include/uapi/linux/io_uring.h: struct io_uring_params is 120 bytes; zero asks for defaults. */
struct io_uring_params_zeroed { unsigned char bytes[120]; };

static char scratch[4096] = "/tmp";
static int made[8];
static int n_made;

static long check(long result) {
    if (result >= 0 && n_made < 8) made[n_made++] = (int)result;
    return result;
}

static const char *scratch_file(const char *name) {
    static char path[4200];
    snprintf(path, sizeof path, "%s/%s", scratch, name);
    return path;
}

/* A loopback listener and a client connected to it, both by raw calls; the listener's fd. */
static long listener_with_client(void) {
    long listener = check(syscall(SYS_socket, AF_INET, SOCK_STREAM, 0));
    if (listener < 0) return -1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (syscall(SYS_bind, listener, &addr, sizeof addr) < 0 || syscall(SYS_listen, listener, 8) < 0 ||
        syscall(SYS_getsockname, listener, &addr, &len) < 0)
        return -1;
    long client = check(syscall(SYS_socket, AF_INET, SOCK_STREAM, 0));
    if (client < 0 || syscall(SYS_connect, client, &addr, sizeof addr) < 0) return -1;
    return listener;
}

/* A socketpair with fd 0 sent over it in an SCM_RIGHTS message; the receiving end. */
static long pair_with_rights_in_flight(void) {
    int pair[2];
    if (syscall(SYS_socketpair, AF_UNIX, SOCK_STREAM, 0, pair) < 0) return -1;
    check(pair[0]);
    check(pair[1]);
    int passed = 0;
    char byte = 'x';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &passed, sizeof passed);
    if (syscall(SYS_sendmsg, pair[0], &msg, 0) < 0) return -1;
    return pair[1];
}

/* Receive one SCM_RIGHTS descriptor; `many` through recvmmsg. The received fd is recorded. */
static long receive_rights(long sock, int many) {
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    long got;
    if (many) {
        struct mmsghdr one = {.msg_hdr = msg};
        got = syscall(SYS_recvmmsg, sock, &one, 1, 0, NULL);
        msg = one.msg_hdr;
    } else {
        got = syscall(SYS_recvmsg, sock, &msg, 0);
    }
    if (got < 0) return -1;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    if (!cmsg || cmsg->cmsg_type != SCM_RIGHTS) { errno = EPROTO; return -1; }
    int fd;
    memcpy(&fd, CMSG_DATA(cmsg), sizeof fd);
    return check(fd);
}

static long call_open(void) { return check(syscall(SYS_open, scratch_file("open"), O_CREAT | O_RDWR, 0600)); }
static long call_creat(void) { return check(syscall(SYS_creat, scratch_file("creat"), 0600)); }
static long call_openat(void) {
    return check(syscall(SYS_openat, AT_FDCWD, scratch_file("openat"), O_CREAT | O_RDWR | O_CLOEXEC, 0600));
}
static long call_openat2(void) {
    struct open_how_v0 how = {.flags = O_CREAT | O_RDWR | O_CLOEXEC, .mode = 0600};
    return check(syscall(SYS_openat2, AT_FDCWD, scratch_file("openat2"), &how, sizeof how));
}
static long call_open_by_handle_at(void) {
    struct file_handle_128 handle = {.handle_bytes = 128};
    int mount_id;
    long mount_fd = check(syscall(SYS_openat, AT_FDCWD, "/", O_RDONLY | O_DIRECTORY));
    if (mount_fd < 0 || syscall(SYS_name_to_handle_at, AT_FDCWD, scratch, &handle, &mount_id, 0) < 0) return -1;
    return check(syscall(SYS_open_by_handle_at, mount_fd, &handle, O_RDONLY | O_DIRECTORY));
}
static long call_socket(void) { return check(syscall(SYS_socket, AF_INET6, SOCK_DGRAM, 0)); }
static long call_socketpair(void) {
    int pair[2];
    if (syscall(SYS_socketpair, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, pair) < 0) return -1;
    check(pair[0]);
    return check(pair[1]);
}
static long call_accept(void) {
    long listener = listener_with_client();
    return listener < 0 ? -1 : check(syscall(SYS_accept, listener, NULL, NULL));
}
static long call_accept4(void) {
    long listener = listener_with_client();
    return listener < 0 ? -1 : check(syscall(SYS_accept4, listener, NULL, NULL, SOCK_CLOEXEC));
}
static long call_pipe(void) {
    int fds[2];
    if (syscall(SYS_pipe, fds) < 0) return -1;
    check(fds[0]);
    return check(fds[1]);
}
static long call_pipe2(void) {
    int fds[2];
    if (syscall(SYS_pipe2, fds, O_CLOEXEC) < 0) return -1;
    check(fds[0]);
    return check(fds[1]);
}
static long call_dup(void) { return check(syscall(SYS_dup, 0)); }
static long call_dup2(void) { return check(syscall(SYS_dup2, 0, 100)); }
static long call_dup3(void) { return check(syscall(SYS_dup3, 0, 101, O_CLOEXEC)); }
static long call_fcntl(void) { return check(syscall(SYS_fcntl, 0, F_DUPFD_CLOEXEC, 110)); }
/* ioctl makes no descriptor: it re-flags one (FIOCLEX), which the test checks against fdinfo. */
static long call_ioctl(void) {
    long fd = check(syscall(SYS_openat, AT_FDCWD, scratch_file("ioctl"), O_CREAT | O_RDWR, 0600));
    return fd < 0 || syscall(SYS_ioctl, fd, FIOCLEX) < 0 ? -1 : fd;
}
static long call_eventfd(void) { return check(syscall(SYS_eventfd, 0)); }
static long call_eventfd2(void) { return check(syscall(SYS_eventfd2, 0, O_CLOEXEC)); }
static long call_epoll_create(void) { return check(syscall(SYS_epoll_create, 1)); }
static long call_epoll_create1(void) { return check(syscall(SYS_epoll_create1, O_CLOEXEC)); }
static long call_timerfd_create(void) { return check(syscall(SYS_timerfd_create, 1 /* CLOCK_MONOTONIC */, O_CLOEXEC)); }
static long call_signalfd(void) {
    uint64_t mask = 1ULL << (12 - 1); /* SIGUSR2 */
    return check(syscall(SYS_signalfd, -1, &mask, sizeof mask));
}
static long call_signalfd4(void) {
    uint64_t mask = 1ULL << (12 - 1);
    return check(syscall(SYS_signalfd4, -1, &mask, sizeof mask, O_CLOEXEC));
}
static long call_inotify_init(void) { return check(syscall(SYS_inotify_init)); }
static long call_inotify_init1(void) { return check(syscall(SYS_inotify_init1, O_CLOEXEC)); }
/* include/uapi/linux/fanotify.h: FAN_CLOEXEC 0x1, FAN_CLASS_NOTIF 0x0 */
static long call_fanotify_init(void) { return check(syscall(SYS_fanotify_init, 0x1, O_RDONLY)); }
/* include/uapi/linux/memfd.h: MFD_CLOEXEC 0x1 */
static long call_memfd_create(void) { return check(syscall(SYS_memfd_create, "rawcalls", 0x1)); }
static long call_pidfd_open(void) { return check(syscall(SYS_pidfd_open, getpid(), 0)); }
static long call_pidfd_getfd(void) {
    long pidfd = check(syscall(SYS_pidfd_open, getpid(), 0));
    return pidfd < 0 ? -1 : check(syscall(SYS_pidfd_getfd, pidfd, 0, 0));
}
static long call_userfaultfd(void) { return check(syscall(SYS_userfaultfd, O_CLOEXEC)); }
static long call_perf_event_open(void) {
    struct perf_event_attr_v0 attr = {.type = 1 /* PERF_TYPE_SOFTWARE */, .size = sizeof attr,
                                      .config = 1 /* PERF_COUNT_SW_TASK_CLOCK */,
                                      .flags = 1 | 1 << 5 | 1 << 6};
    return check(syscall(SYS_perf_event_open, &attr, 0, -1, -1, 8 /* PERF_FLAG_FD_CLOEXEC */));
}
static long call_io_uring_setup(void) {
    struct io_uring_params_zeroed params;
    memset(&params, 0, sizeof params);
    return check(syscall(SYS_io_uring_setup, 4, &params));
}
static long call_recvmsg(void) {
    long sock = pair_with_rights_in_flight();
    return sock < 0 ? -1 : receive_rights(sock, 0);
}
static long call_recvmmsg(void) {
    long sock = pair_with_rights_in_flight();
    return sock < 0 ? -1 : receive_rights(sock, 1);
}
/* Two copies of fd 0 at 120 and 121, closed as a range; the reply names what is gone. */
static long call_close_range(void) {
    if (syscall(SYS_dup2, 0, 120) < 0 || syscall(SYS_dup2, 0, 121) < 0) return -1;
    return syscall(SYS_close_range, 120, 121, 0);
}

static const struct { const char *name; long (*issue)(void); } CALLS[] = {
    {"open", call_open},
    {"creat", call_creat},
    {"openat", call_openat},
    {"openat2", call_openat2},
    {"open_by_handle_at", call_open_by_handle_at},
    {"socket", call_socket},
    {"socketpair", call_socketpair},
    {"accept", call_accept},
    {"accept4", call_accept4},
    {"pipe", call_pipe},
    {"pipe2", call_pipe2},
    {"dup", call_dup},
    {"dup2", call_dup2},
    {"dup3", call_dup3},
    {"fcntl", call_fcntl},
    {"ioctl", call_ioctl},
    {"eventfd", call_eventfd},
    {"eventfd2", call_eventfd2},
    {"epoll_create", call_epoll_create},
    {"epoll_create1", call_epoll_create1},
    {"timerfd_create", call_timerfd_create},
    {"signalfd", call_signalfd},
    {"signalfd4", call_signalfd4},
    {"inotify_init", call_inotify_init},
    {"inotify_init1", call_inotify_init1},
    {"fanotify_init", call_fanotify_init},
    {"memfd_create", call_memfd_create},
    {"pidfd_open", call_pidfd_open},
    {"pidfd_getfd", call_pidfd_getfd},
    {"userfaultfd", call_userfaultfd},
    {"perf_event_open", call_perf_event_open},
    {"io_uring_setup", call_io_uring_setup},
    {"recvmsg", call_recvmsg},
    {"recvmmsg", call_recvmmsg},
    {"close_range", call_close_range},
};

int main(int argc, char **argv) {
    if (argc > 1) snprintf(scratch, sizeof scratch, "%s", argv[1]);
    char line[256];
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        long fd;
        if (!strcmp(line, "exit")) {
            return 0;
        } else if (!strcmp(line, "list")) {
            printf("ok");
            for (size_t i = 0; i < sizeof CALLS / sizeof CALLS[0]; i++) printf(" %s", CALLS[i].name);
            printf("\n");
        } else if (sscanf(line, "close %ld", &fd) == 1) {
            if (syscall(SYS_close, fd) < 0) printf("err %s\n", strerror(errno));
            else printf("ok\n");
        } else {
            size_t i = 0;
            while (i < sizeof CALLS / sizeof CALLS[0] && strcmp(CALLS[i].name, line)) i++;
            if (i == sizeof CALLS / sizeof CALLS[0]) {
                printf("err unknown command %s\n", line);
            } else {
                n_made = 0;
                if (CALLS[i].issue() < 0) {
                    printf("err %s: %s\n", line, strerror(errno));
                } else {
                    printf("ok");
                    for (int k = 0; k < n_made; k++) printf(" %d", made[k]);
                    printf("\n");
                }
            }
        }
        fflush(stdout);
    }
    return 0;
}
