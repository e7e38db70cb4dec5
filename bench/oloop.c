/*
 * oloop: a traced descriptor call in a tight loop, to profile where a tracer's time goes with
 * `perf record` (BENCHMARKS.md, "The floor again, and where the time goes").
 *
 *   oloop SECONDS [socket|nest|recvmsg|scm|udpbatch]
 *
 * Waits for a line on stdin (so a tracer attaches to this pid first), then for SECONDS makes
 * open("/dev/null")+close, or socket(AF_INET, SOCK_STREAM)+close with `socket`, with nothing in
 * between, or with `nest` a socket and, holding it, an open of /dev/null, then the two closes
 * (a server's connection and the file it serves: two calls and their closes an operation), or
 * over a datagram socketpair with `recvmsg` a byte sent and received by recvmsg with room for
 * control messages (none come), with `scm` a byte and a descriptor (SCM_RIGHTS) sent, received
 * by recvmsg and the descriptor closed, with `udpbatch` 16 datagrams a UDP socket on loopback
 * sends itself, received by one recvmmsg (a DNS or QUIC server's batch), and
 * prints how many it made and the mean ns of one ("N ops M ns per operation", its last line;
 * after its first second, when SECONDS is 1 or more, it prints "warm N", the operations made by
 * then). Unlike churn.c
 * there are no phases and no pauses: every sample perf takes of it in those seconds is of the
 * one loop (and bench/ctime.sh divides the kernel's time by N).
 * Build: gcc -O2 -fomit-frame-pointer -g (like the tests' workloads).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <netinet/in.h>
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

/* One byte over `pair`, with fd 0 in an SCM_RIGHTS message when `pass`; received by recvmsg
 * with room for a control message; the descriptor received, if any, closed. */
static void round_trip(const int pair[2], int pass) {
    char byte = 'x', control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (pass) {
        int fd = 0;
        memset(control, 0, sizeof control);
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
    }
    if (sendmsg(pair[0], &msg, 0) < 0) exit(1);
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    if (recvmsg(pair[1], &msg, 0) < 0) exit(1);
    struct cmsghdr *got = CMSG_FIRSTHDR(&msg);
    if (got && got->cmsg_level == SOL_SOCKET && got->cmsg_type == SCM_RIGHTS) {
        int fd;
        memcpy(&fd, CMSG_DATA(got), sizeof fd);
        close(fd);
    }
}

/* UDP_BATCH datagrams `sock` sends itself (bound on loopback at `to`), received by one
 * recvmmsg with room for a control message each (none come). */
#define UDP_BATCH 16
static void udp_batch(int sock, const struct sockaddr_in *to) {
    static struct mmsghdr mm[UDP_BATCH];
    static struct iovec iov[UDP_BATCH];
    static char data[UDP_BATCH][8], control[UDP_BATCH][64];
    for (int m = 0; m < UDP_BATCH; m++) {
        if (sendto(sock, "x", 1, 0, (const struct sockaddr *)to, sizeof *to) < 0) exit(1);
        iov[m] = (struct iovec){.iov_base = data[m], .iov_len = sizeof data[m]};
        mm[m].msg_hdr = (struct msghdr){.msg_iov = &iov[m], .msg_iovlen = 1, .msg_control = control[m],
                                        .msg_controllen = sizeof control[m]};
    }
    if (recvmmsg(sock, mm, UDP_BATCH, 0, NULL) != UDP_BATCH) exit(1);
}

int main(int argc, char **argv) {
    const char *mode = argc > 2 ? argv[2] : "open";
    int sockets = strcmp(mode, "socket") == 0, nest = strcmp(mode, "nest") == 0;
    int messages = strcmp(mode, "recvmsg") == 0, pass = strcmp(mode, "scm") == 0;
    int batches = strcmp(mode, "udpbatch") == 0;
    if (argc < 2 || (argc > 2 && !sockets && !nest && !messages && !pass && !batches)) {
        fprintf(stderr, "usage: oloop SECONDS [socket|nest|recvmsg|scm|udpbatch]\n");
        return 2;
    }
    int pair[2], udp = -1;
    if ((messages || pass) && socketpair(AF_UNIX, SOCK_DGRAM, 0, pair) < 0) return 1;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t to_len = sizeof to;
    if (batches && ((udp = socket(AF_INET, SOCK_DGRAM, 0)) < 0 || bind(udp, (struct sockaddr *)&to, sizeof to) < 0 ||
                    getsockname(udp, (struct sockaddr *)&to, &to_len) < 0))
        return 1;
    char line[8];
    if (!fgets(line, sizeof line, stdin)) return 1;
    double start = now(), seconds = atof(argv[1]);
    long done = 0;
    int warm = 0;
    while (now() - start < seconds) {
        for (int i = 0; i < 1000; i++) {
            if (batches) {
                udp_batch(udp, &to);
                continue;
            }
            if (messages || pass) {
                round_trip(pair, pass);
                continue;
            }
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
