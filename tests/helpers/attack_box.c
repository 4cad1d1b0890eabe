/* Static probes for tests/test_attack_box.py: each prints "name ok" or "name ERRNO". */
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
#include <sys/sysmacros.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/sched.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <net/if.h>
#include <linux/if_packet.h>
#include <linux/if_ether.h>

static const char *en(int e) {
    static char b[32];
    switch (e) {
    case EPERM: return "EPERM"; case ENOENT: return "ENOENT"; case EACCES: return "EACCES";
    case ENOSYS: return "ENOSYS"; case EINVAL: return "EINVAL"; case EROFS: return "EROFS";
    case EBADF: return "EBADF"; case ECONNREFUSED: return "ECONNREFUSED"; case ETIMEDOUT: return "ETIMEDOUT";
    case ENETUNREACH: return "ENETUNREACH"; case EHOSTUNREACH: return "EHOSTUNREACH"; case EFAULT: return "EFAULT";
    case EEXIST: return "EEXIST"; case ESRCH: return "ESRCH"; case ENOTSUP: return "ENOTSUP";
    default: snprintf(b, sizeof b, "E%d", e); return b;
    }
}
#define R(name, expr) do { errno = 0; long _r = (long)(expr); \
    if (_r < 0) printf("%s %s\n", name, en(errno)); else printf("%s ok\n", name); fflush(stdout); } while (0)

static int syscalls(void) {
    R("mount", mount("none", "/mnt", "tmpfs", 0, NULL));
    R("umount2", umount2("/proc", MNT_DETACH));
    R("unshare_user", unshare(CLONE_NEWUSER));
    R("unshare_ns", unshare(CLONE_NEWNS));
    R("unshare_net", unshare(CLONE_NEWNET));
    R("unshare_cgroup", unshare(CLONE_NEWCGROUP));
    R("unshare_files", unshare(CLONE_FILES));
    int nfd = open("/proc/self/ns/net", O_RDONLY);
    R("setns", setns(nfd, 0));
    R("keyctl", syscall(SYS_keyctl, 0 /*GET_KEYRING_ID*/, -3, 0));
    R("add_key", syscall(SYS_add_key, "user", "x", "y", 1, -3));
    R("request_key", syscall(SYS_request_key, "user", "x", NULL, -3));
    char attr[128]; memset(attr, 0, sizeof attr);
    R("bpf", syscall(SYS_bpf, 0 /*MAP_CREATE*/, attr, sizeof attr));
    char pattr[128]; memset(pattr, 0, sizeof pattr); *(unsigned *)(pattr + 4) = 128;
    R("perf_event_open", syscall(SYS_perf_event_open, pattr, 0, -1, -1, 0));
    struct { unsigned int bytes; int type; unsigned char f[128]; } fh = {128, 0};
    int mid;
    R("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &fh, &mid, 0));
    R("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, &fh, O_RDONLY));
    struct clone_args ca; memset(&ca, 0, sizeof ca); ca.flags = CLONE_NEWUSER; ca.exit_signal = SIGCHLD;
    long c = syscall(SYS_clone3, &ca, sizeof ca);
    if (c == 0) _exit(0);
    if (c > 0) { waitpid(c, NULL, 0); printf("clone3_newuser ok\n"); } else printf("clone3_newuser %s\n", en(errno));
    memset(&ca, 0, sizeof ca); ca.exit_signal = SIGCHLD;
    c = syscall(SYS_clone3, &ca, sizeof ca);
    if (c == 0) _exit(0);
    if (c > 0) { waitpid(c, NULL, 0); printf("clone3_plain ok\n"); } else printf("clone3_plain %s\n", en(errno));
    c = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (c == 0) _exit(0);
    if (c > 0) { waitpid(c, NULL, 0); printf("clone_newuser ok\n"); } else printf("clone_newuser %s\n", en(errno));
    c = syscall(SYS_clone, CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0);
    if (c == 0) _exit(0);
    if (c > 0) { waitpid(c, NULL, 0); printf("clone_newns ok\n"); } else printf("clone_newns %s\n", en(errno));
    char up[256]; memset(up, 0, sizeof up);
    R("io_uring_setup", syscall(425, 8, up));
    R("userfaultfd", syscall(SYS_userfaultfd, 0));
    R("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    R("init_module", syscall(SYS_init_module, NULL, 0, ""));
    R("finit_module", syscall(SYS_finit_module, -1, "", 0));
    R("delete_module", syscall(SYS_delete_module, "x", 0));
    R("iopl", syscall(SYS_iopl, 3));
    R("ioperm", syscall(SYS_ioperm, 0x80, 1, 1));
    R("swapon", syscall(SYS_swapon, "/x", 0));
    R("reboot", syscall(SYS_reboot, 0xfee1dead, 672274793, 0x4321FEDC, NULL));
    R("syslog", syscall(SYS_syslog, 3, up, 10));
    R("acct", syscall(SYS_acct, NULL));
    R("settimeofday", syscall(SYS_settimeofday, NULL, NULL));
    R("pivot_root", syscall(SYS_pivot_root, "/", "/"));
    R("fsopen", syscall(430, "tmpfs", 0));
    R("open_tree", syscall(428, AT_FDCWD, "/", 1 /*OPEN_TREE_CLONE*/));
    R("fanotify_init", syscall(SYS_fanotify_init, 0, 0));
    R("lookup_dcookie", syscall(SYS_lookup_dcookie, 0, up, 10));
    R("quotactl", syscall(SYS_quotactl, 0, NULL, 0, NULL));
    R("personality_bad", syscall(SYS_personality, 0x0040000 /*ADDR_NO_RANDOMIZE*/));
    R("vhangup", syscall(SYS_vhangup));
    R("sethostname", sethostname("x", 1));
    R("kill_outside", kill(999999, 0));
    R("socket_packet", socket(AF_PACKET, SOCK_RAW, htons(3)));
    R("socket_netlink_audit", socket(AF_NETLINK, SOCK_RAW, 9));
    R("chroot", chroot("/"));
    return 0;
}

/* mknod a device then open it for reading */
static int dev(const char *path, const char *type, int ma, int mi) {
    mode_t m = (type[0] == 'b' ? S_IFBLK : S_IFCHR) | 0600;
    unlink(path);
    R("mknod", mknod(path, m, makedev(ma, mi)));
    int fd = open(path, O_RDONLY);
    if (fd < 0) { printf("open %s\n", en(errno)); return 0; }
    char b[512]; ssize_t n = read(fd, b, sizeof b);
    printf("open ok read %zd\n", n);
    return 0;
}

/* write to a path */
static int wr(const char *path, const char *data) {
    int fd = open(path, O_WRONLY);
    if (fd < 0) { printf("openw %s\n", en(errno)); return 0; }
    ssize_t n = write(fd, data, strlen(data));
    if (n < 0) printf("write %s\n", en(errno)); else printf("write ok\n");
    return 0;
}

/* TCP connect to ip port, send line, print reply */
static int tcp(const char *ip, int port) {
    int s; struct sockaddr_storage ss; socklen_t sl;
    memset(&ss, 0, sizeof ss);
    if (strchr(ip, ':')) { struct sockaddr_in6 *a = (void *)&ss; a->sin6_family = AF_INET6; a->sin6_port = htons(port); inet_pton(AF_INET6, ip, &a->sin6_addr); sl = sizeof *a; s = socket(AF_INET6, SOCK_STREAM, 0); }
    else { struct sockaddr_in *a = (void *)&ss; a->sin_family = AF_INET; a->sin_port = htons(port); inet_pton(AF_INET, ip, &a->sin_addr); sl = sizeof *a; s = socket(AF_INET, SOCK_STREAM, 0); }
    struct timeval tv = {2, 0};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (void *)&ss, sl) < 0) { printf("connect %s %s\n", ip, en(errno)); return 0; }
    char b[256]; ssize_t n = recv(s, b, sizeof b - 1, 0);
    b[n > 0 ? n : 0] = 0;
    for (char *p = b; *p; p++) if (*p == '\n' || *p == ' ') *p = '_';
    printf("connect %s ok %s\n", ip, n > 0 ? b : "-");
    return 0;
}

/* Send one hand-made UDP datagram SRC -> DST:PORT out of eth0 to the MAC GW (an AF_PACKET
   socket: the kernel's routing, which would keep 127.0.0.1 on the box's own loopback, is
   bypassed), as a container with CAP_NET_RAW can. */
static unsigned short csum(const unsigned char *p, int n) {
    unsigned long s = 0;
    for (int i = 0; i + 1 < n; i += 2) s += (p[i] << 8) | p[i + 1];
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (unsigned short)~s;
}

static int udpframe(const char *src, const char *gw, const char *dst, int port, const char *payload) {
    unsigned char f[1500]; int plen = strlen(payload), n = 28 + plen;
    memset(f, 0, 28);
    f[0] = 0x45; f[2] = n >> 8; f[3] = n & 0xff; f[8] = 64; f[9] = 17;
    inet_pton(AF_INET, src, f + 12); inet_pton(AF_INET, dst, f + 16);
    unsigned short c = csum(f, 20); f[10] = c >> 8; f[11] = c & 0xff;
    f[20] = 0x30; f[21] = 0x39; f[22] = port >> 8; f[23] = port & 0xff;
    f[24] = (8 + plen) >> 8; f[25] = (8 + plen) & 0xff;          /* UDP checksum 0: none */
    memcpy(f + 28, payload, plen);
    int s = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
    if (s < 0) { printf("udpframe socket %s\n", en(errno)); return 0; }
    struct sockaddr_ll a; memset(&a, 0, sizeof a);
    a.sll_family = AF_PACKET; a.sll_protocol = htons(ETH_P_IP); a.sll_ifindex = if_nametoindex("eth0");
    a.sll_halen = 6;
    unsigned int m[6];
    if (sscanf(gw, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) return 2;
    for (int i = 0; i < 6; i++) a.sll_addr[i] = m[i];
    if (sendto(s, f, n, 0, (void *)&a, sizeof a) < 0) printf("udpframe %s send %s\n", dst, en(errno));
    else printf("udpframe %s sent\n", dst);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 7 && !strcmp(argv[1], "udpframe")) return udpframe(argv[2], argv[3], argv[4], atoi(argv[5]), argv[6]);
    if (argc >= 2 && !strcmp(argv[1], "syscalls")) return syscalls();
    if (argc >= 6 && !strcmp(argv[1], "dev")) return dev(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
    if (argc >= 4 && !strcmp(argv[1], "write")) return wr(argv[2], argv[3]);
    if (argc >= 4 && !strcmp(argv[1], "tcp")) return tcp(argv[2], atoi(argv[3]));
    fprintf(stderr, "usage\n");
    return 2;
}
