/*
 * podinit: the last step of a test pod's init (tests/integration/pods/harness.rs): pivot into
 * the pod's root (the current directory, a tmpfs mounted in the pod's own mount namespace) and
 * become the workload.
 *
 * pivot_root(".", ".") then umount2(".", MNT_DETACH) is pivot_root(2)'s own recipe for a new
 * root without a put_old directory: the old root ends up mounted on top of the new one and is
 * detached. It must be one program, linked statically, because after the pivot the host's
 * files (a shell, umount, their libraries) are gone.
 *
 * Usage: cd NEWROOT && podinit PROGRAM [ARGS...]    (PROGRAM is a path inside NEWROOT)
 * Build: gcc -static -O2 podinit.c -o podinit
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: podinit PROGRAM [ARGS...]\n");
        return 2;
    }
    if (syscall(SYS_pivot_root, ".", ".") < 0) {
        perror("podinit: pivot_root");
        return 1;
    }
    if (umount2(".", MNT_DETACH) < 0) {
        perror("podinit: umount2 of the old root");
        return 1;
    }
    if (chdir("/") < 0) {
        perror("podinit: chdir /");
        return 1;
    }
    execv(argv[1], argv + 1);
    fprintf(stderr, "podinit: cannot run %s: ", argv[1]);
    perror("");
    return 127;
}
