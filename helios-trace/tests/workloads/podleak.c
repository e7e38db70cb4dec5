/*
 * podleak: the native workload of the pod tests (tests/integration/pods/), run in a pod's own
 * root filesystem and, the same binary, on the host beside it.
 *
 * It leaks through the C library's own wrappers (open, accept4), not through inline syscalls:
 * the innermost user frame is the libc of the root the process runs in (the host's glibc, a
 * Debian sid glibc, or musl linked in statically), so naming the leaking function needs that
 * libc's unwind tables, read from the file only the pod can see. noipa keeps every function a
 * real frame under its own name, and each caller uses the result after the call, so no call
 * becomes a tail call.
 *
 * Commands on stdin, one per line; one answer line on stdout ("ok ..." / "err ..."):
 *   files N     N files opened by leak_file() (in /tmp)        -> their fds
 *   cloexec-files N  the same, opened close-on-exec             -> their fds
 *   accept N    N loopback connections accepted by leak_accept(), each holding 4096 unread
 *               bytes; the clients' ends stay open too          -> the accepted fds
 *   slow-close  a loopback client whose close, on a thread of its own, blocks in the kernel
 *               for a second after releasing its number (SO_LINGER with data the server never
 *               reads); meanwhile leak_file() is given that number. The close's exit comes
 *               after the open's                                 -> the client's fd, the
 *               file's, the accepted server end's
 *   exit
 *
 * Build: gcc -O2 -g podleak.c -o podleak; musl-gcc -static -O2 -g podleak.c -o podleak.musl
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static int counter;
static int leaked; /* used after each leaking call, so none is a tail call */
static int listener = -1;

__attribute__((noipa)) static int leak_file(int flags) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/podleak-%d", counter++);
    int fd = open(path, O_CREAT | O_RDWR | flags, 0600); /* LEAK_OPEN: the tests look for this line */
    if (fd >= 0) leaked++;
    return fd;
}

__attribute__((noipa)) static int leak_accept(int server) {
    int fd = accept4(server, NULL, NULL, 0); /* LEAK_ACCEPT: the tests look for this line */
    if (fd >= 0) leaked++;
    return fd;
}

/* A client that connects and sends 4096 bytes the server never reads. */
__attribute__((noipa)) static int connect_client(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) return -1;
    static char payload[4096];
    memset(payload, 'x', sizeof payload);
    if (write(fd, payload, sizeof payload) != (ssize_t)sizeof payload) return -1;
    return fd;
}

static int listening_port(void);

static void *close_it(void *fd) {
    close((int)(long)fd);
    return NULL;
}

/* slow-close (see the top). The close lingers: tcp_close waits up to l_linger for the FIN it
 * cannot send behind data a full receive window holds back (net/ipv4/tcp.c, __tcp_close and
 * sk_stream_wait_close), in the close syscall itself (fs/open.c, close: __fput_sync), after
 * file_close_fd released the number. */
static void slow_close(int server) {
    int client = connect_client(listening_port());
    int accepted = client < 0 ? -1 : accept4(server, NULL, NULL, 0);
    if (accepted < 0 || fcntl(client, F_SETFL, O_NONBLOCK) < 0) {
        printf("err connect\n");
        return;
    }
    static char chunk[65536];
    while (write(client, chunk, sizeof chunk) > 0) {
    }
    struct linger linger = {.l_onoff = 1, .l_linger = 1};
    if (errno != EAGAIN || setsockopt(client, SOL_SOCKET, SO_LINGER, &linger, sizeof linger) < 0) {
        printf("err fill\n");
        return;
    }
    pthread_t closer;
    if (pthread_create(&closer, NULL, close_it, (void *)(long)client) != 0) {
        printf("err thread\n");
        return;
    }
    usleep(300000);
    int file = leak_file(0);
    pthread_join(closer, NULL);
    printf("ok %d %d %d\n", client, file, accepted);
}

static int listening_port(void) {
    if (listener < 0) {
        listener = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in at = {.sin_family = AF_INET};
        at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (listener < 0 || bind(listener, (struct sockaddr *)&at, sizeof at) < 0 || listen(listener, 256) < 0)
            return -1;
    }
    struct sockaddr_in at;
    socklen_t len = sizeof at;
    if (getsockname(listener, (struct sockaddr *)&at, &len) < 0) return -1;
    return ntohs(at.sin_port);
}

int main(void) {
    /* `accept` may hold thousands of sockets: the soft descriptor limit raised to the hard one. */
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    printf("ready %d\n", getpid());
    fflush(stdout);
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        char cmd[32] = "";
        long n = 0;
        sscanf(line, "%31s %ld", cmd, &n);
        if (n < 0 || n > 1000) {
            printf("err count out of range\n");
        } else if (!strcmp(cmd, "files")) {
            printf("ok");
            for (long i = 0; i < n; i++) printf(" %d", leak_file(0));
            printf("\n");
        } else if (!strcmp(cmd, "cloexec-files")) {
            printf("ok");
            for (long i = 0; i < n; i++) printf(" %d", leak_file(O_CLOEXEC));
            printf("\n");
        } else if (!strcmp(cmd, "accept")) {
            int port = listening_port();
            if (port < 0) {
                printf("err listen\n");
                fflush(stdout);
                continue;
            }
            printf("ok");
            for (long i = 0; i < n; i++) {
                if (connect_client(port) < 0) break;
                printf(" %d", leak_accept(listener));
            }
            printf("\n");
        } else if (!strcmp(cmd, "slow-close")) {
            if (listening_port() < 0) printf("err listen\n");
            else slow_close(listener);
        } else if (!strcmp(cmd, "exit")) {
            return 0;
        } else {
            printf("err unknown command\n");
        }
        fflush(stdout);
    }
    return 0;
}
