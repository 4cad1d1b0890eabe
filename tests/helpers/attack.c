/* Static helper for tests/test_confinement.py: the attacks a RUN step would make.
 *   attack sniff MARKER SECONDS   count packets on an AF_PACKET socket that carry MARKER
 *   attack escape PATH            chroot twice out of the root, then read PATH and create PATH.pwned
 *   attack syscalls               try keyctl, add_key, unshare(CLONE_NEWUSER), mount, clone(NEWUSER)
 * Each outcome is one line on stdout, "name ok" or "name errno-name". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/if_ether.h>

static const char *en(int e) {
    switch (e) {
    case EPERM: return "EPERM"; case ENOENT: return "ENOENT"; case EACCES: return "EACCES";
    case ENOSYS: return "ENOSYS"; case EINVAL: return "EINVAL"; case EROFS: return "EROFS";
    default: return strerror(e);
    }
}

static int sniff(const char *marker, int seconds) {
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (s < 0) { printf("socket %s\n", en(errno)); return 2; }
    printf("socket ok\n"); fflush(stdout);
    struct timeval tv = {0, 200000};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    static char buf[70000];
    size_t ml = strlen(marker);
    long seen = 0, packets = 0;
    time_t end = time(NULL) + seconds;
    while (time(NULL) < end) {
        ssize_t n = recv(s, buf, sizeof buf, 0);
        if (n <= 0) continue;
        packets++;
        if (memmem(buf, n, marker, ml)) seen++;
    }
    printf("packets %ld\nseen %ld\n", packets, seen);
    return 0;
}

static int escape(const char *path) {
    mkdir("x", 0755);
    if (chroot("x") != 0) { printf("chroot %s\n", en(errno)); return 2; }
    for (int i = 0; i < 64; i++) chdir("..");
    if (chroot(".") != 0) { printf("chroot2 %s\n", en(errno)); return 2; }
    int fd = open(path, O_RDONLY);
    if (fd < 0) printf("read %s\n", en(errno));
    else { char b[256]; ssize_t n = read(fd, b, sizeof b - 1); b[n > 0 ? n : 0] = 0; printf("read ok %s\n", b); }
    char w[4096];
    snprintf(w, sizeof w, "%s.pwned", path);
    fd = open(w, O_WRONLY | O_CREAT, 0644);
    printf("write %s\n", fd < 0 ? en(errno) : "ok");
    return 0;
}

static void report(const char *name, long rc) { printf("%s %s\n", name, rc < 0 ? en(errno) : "ok"); }

static int syscalls(void) {
    report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0));
    report("add_key", syscall(SYS_add_key, "user", "pybuild", "x", 1, -3));
    report("unshare", syscall(SYS_unshare, CLONE_NEWUSER));
    mkdir("/mnt", 0755);
    report("mount", mount("none", "/mnt", "tmpfs", 0, NULL));
    long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    report("clone_newuser", pid);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && !strcmp(argv[1], "sniff")) return sniff(argv[2], atoi(argv[3]));
    if (argc == 3 && !strcmp(argv[1], "escape")) return escape(argv[2]);
    if (argc == 2 && !strcmp(argv[1], "syscalls")) return syscalls();
    fprintf(stderr, "usage: attack sniff MARKER SECONDS | escape PATH | syscalls\n");
    return 64;
}
