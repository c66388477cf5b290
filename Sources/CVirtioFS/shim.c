// SPDX-License-Identifier: Apache-2.0
#define _GNU_SOURCE
#include "cvfs_syscalls.h"
#include "cvfs_kernel.h"
#include "cvfs_vhost_user.h"

#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/sysmacros.h>
#include <string.h>
#include <sys/syscall.h>
#include <linux/fs.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <linux/sched.h>
#include <poll.h>
#include <sys/signalfd.h>

int cvfs_errno(void) { return errno; }
void cvfs_set_errno(int value) { errno = value; }

ssize_t cvfs_getdents64(int fd, void *buffer, size_t count) {
    return syscall(SYS_getdents64, fd, buffer, count);
}

int cvfs_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return (int)syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, flags);
}

int cvfs_setresuid_thread(uid_t ruid, uid_t euid, uid_t suid) {
    return (int)syscall(SYS_setresuid, ruid, euid, suid);
}

int cvfs_setresgid_thread(gid_t rgid, gid_t egid, gid_t sgid) {
    return (int)syscall(SYS_setresgid, rgid, egid, sgid);
}

int cvfs_statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *out) {
    return statx(dirfd, path, flags, mask, out);
}

uint64_t cvfs_makedev(unsigned int major, unsigned int minor) { return makedev(major, minor); }
int cvfs_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }
int cvfs_accept4(int socket, int flags) { return accept4(socket, NULL, NULL, flags); }
int cvfs_set_thread_name(const char *name) { return pthread_setname_np(pthread_self(), name); }
const unsigned int CVFS_MFD_CLOEXEC = MFD_CLOEXEC;

int cvfs_fallocate(int fd, int mode, int64_t offset, int64_t length) {
    return fallocate(fd, mode, (off_t)offset, (off_t)length);
}

ssize_t cvfs_copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t length, unsigned int flags) {
    loff_t in = *off_in, out = *off_out;
    ssize_t n = copy_file_range(fd_in, &in, fd_out, &out, length, flags);
    *off_in = in;
    *off_out = out;
    return n;
}

int cvfs_syncfs(int fd) { return syncfs(fd); }
int cvfs_flock(int fd, int operation) { return flock(fd, operation); }

int cvfs_ofd_lock(int fd, int command, short *type, int64_t *start, int64_t *length, int *pid) {
    struct flock lock = {.l_type = *type, .l_whence = SEEK_SET, .l_start = (off_t)*start, .l_len = (off_t)*length, .l_pid = 0};
    int cmd = command == 0 ? F_OFD_GETLK : command == 1 ? F_OFD_SETLK : F_OFD_SETLKW;
    int result = fcntl(fd, cmd, &lock);
    if (result == 0 && command == 0) {
        *type = lock.l_type;
        *start = lock.l_start;
        *length = lock.l_len;
        *pid = lock.l_pid;
    }
    return result;
}

int cvfs_setgroups_thread(size_t count, const gid_t *groups) {
    return (int)syscall(SYS_setgroups, count, groups);
}

const int CVFS_O_TMPFILE = O_TMPFILE;
const unsigned int CVFS_RENAME_NOREPLACE = RENAME_NOREPLACE;
const unsigned int CVFS_RENAME_EXCHANGE = RENAME_EXCHANGE;
const unsigned int CVFS_RENAME_WHITEOUT = RENAME_WHITEOUT;

_Static_assert(sizeof(struct file_handle) == 8, "struct file_handle header");

int cvfs_name_to_handle_at(int dirfd, const char *path, cvfs_file_handle *handle, int *mount_id, int flags) {
    struct file_handle *fh = (struct file_handle *)handle->bytes;
    fh->handle_bytes = MAX_HANDLE_SZ;
    return name_to_handle_at(dirfd, path, fh, mount_id, flags);
}

int cvfs_open_by_handle_at(int mount_fd, const cvfs_file_handle *handle, int flags) {
    return open_by_handle_at(mount_fd, (struct file_handle *)handle->bytes, flags);
}

int cvfs_unshare_fs(void) { return unshare(CLONE_FS); }

int cvfs_malloc_trim(void) { return malloc_trim(0); }

size_t cvfs_heap_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}

pid_t cvfs_fork(void) { return fork(); }

int cvfs_unshare_namespaces(int user, int rest) {
    int flags = (user ? CLONE_NEWUSER : 0) | (rest ? (CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET) : 0);
    return unshare(flags);
}

int cvfs_mount(const char *source, const char *target, const char *type, unsigned long flags, const void *data) {
    return mount(source, target, type, flags, data);
}

int cvfs_make_mounts_private(void) { return mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL); }

int cvfs_mount_proc(const char *target) {
    return mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME, NULL);
}

int cvfs_bind_self(const char *path) { return mount(path, path, NULL, MS_BIND | MS_REC, NULL); }

int cvfs_pivot_to_cwd(void) {
    if (syscall(SYS_pivot_root, ".", ".") != 0) return -1;
    /* The old root is now stacked on the new one at "/": detach it. */
    if (umount2(".", MNT_DETACH) != 0) return -1;
    return chdir("/");
}

int cvfs_set_parent_death_signal(int signal) { return prctl(PR_SET_PDEATHSIG, signal, 0, 0, 0); }
int cvfs_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
int cvfs_set_no_new_privs(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); }

pid_t cvfs_gettid(void) { return (pid_t)syscall(SYS_gettid); }

#define CVFS_MAX_FDS 16

ssize_t cvfs_send_with_fds(int socket, const void *data, size_t length, const int *fds, size_t fd_count) {
    if (fd_count > CVFS_MAX_FDS) {
        errno = EINVAL;
        return -1;
    }
    struct iovec iov = {.iov_base = (void *)data, .iov_len = length};
    union {
        char buffer[CMSG_SPACE(sizeof(int) * CVFS_MAX_FDS)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd_count > 0) {
        msg.msg_control = control.buffer;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * fd_count);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fd_count);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * fd_count);
    }
    return sendmsg(socket, &msg, MSG_NOSIGNAL);
}

ssize_t cvfs_recv_with_fds(int socket, void *data, size_t length, int *fds, size_t max_fds, size_t *fd_count,
                           int *truncated) {
    struct iovec iov = {.iov_base = data, .iov_len = length};
    union {
        char buffer[CMSG_SPACE(sizeof(int) * CVFS_MAX_FDS)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer,
                         .msg_controllen = sizeof(control.buffer)};
    *fd_count = 0;
    *truncated = 0;
    ssize_t n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) {
        return n;
    }
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *incoming = (int *)CMSG_DATA(cmsg);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, incoming + i, sizeof(int));
            if (*fd_count < max_fds) {
                fds[(*fd_count)++] = fd;
            } else {
                close(fd); // more than the caller can take: never leak one
                *truncated = 1;
            }
        }
    }
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        *truncated = 1;
    }
    return n;
}

const int CVFS_AT_EMPTY_PATH = AT_EMPTY_PATH;
const int CVFS_AT_SYMLINK_NOFOLLOW = AT_SYMLINK_NOFOLLOW;
const int CVFS_AT_FDCWD = AT_FDCWD;
const int CVFS_O_PATH = O_PATH;
const int CVFS_O_NOFOLLOW = O_NOFOLLOW;
const int CVFS_O_CLOEXEC = O_CLOEXEC;
const int CVFS_FALLOC_FL_ZERO_RANGE = FALLOC_FL_ZERO_RANGE;
const int CVFS_O_DIRECTORY = O_DIRECTORY;
const unsigned int CVFS_STATX_BASIC_STATS = STATX_BASIC_STATS;
const unsigned int CVFS_STATX_MNT_ID = STATX_MNT_ID;
const unsigned int CVFS_STATX_BTIME = STATX_BTIME;
const int CVFS_AT_STATX_SYNC_TYPE = AT_STATX_SYNC_TYPE;

// The FUSE structs the server reads and writes, checked against their ABI sizes.
_Static_assert(sizeof(struct fuse_in_header) == 40, "fuse_in_header");
_Static_assert(sizeof(struct fuse_out_header) == 16, "fuse_out_header");
_Static_assert(sizeof(struct fuse_init_in) == 64, "fuse_init_in (7.36+)");
_Static_assert(sizeof(struct fuse_init_out) == 64, "fuse_init_out");
_Static_assert(sizeof(struct fuse_entry_out) == 128, "fuse_entry_out");
_Static_assert(sizeof(struct fuse_attr_out) == 104, "fuse_attr_out");
_Static_assert(sizeof(struct fuse_statx) == 256, "fuse_statx");
_Static_assert(sizeof(struct fuse_statx_in) == 24, "fuse_statx_in");
_Static_assert(sizeof(struct fuse_statx_out) == 288, "fuse_statx_out");
_Static_assert(sizeof(struct fuse_supp_groups) == 4, "fuse_supp_groups");
_Static_assert(sizeof(struct vring_desc) == 16, "vring_desc");
_Static_assert(sizeof(struct vring_used_elem) == 8, "vring_used_elem");

// MARK: Crash reports

static const char *cvfs_program = "swift-virtiofsd";

static size_t cvfs_append(char *buffer, size_t at, size_t capacity, const char *text) {
    while (*text && at + 1 < capacity) buffer[at++] = *text++;
    return at;
}

static size_t cvfs_append_number(char *buffer, size_t at, size_t capacity, unsigned long value, unsigned base) {
    char digits[24];
    int count = 0;
    do {
        unsigned d = (unsigned)(value % base);
        digits[count++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        value /= base;
    } while (value > 0 && count < 24);
    while (count > 0 && at + 1 < capacity) buffer[at++] = digits[--count];
    return at;
}

static const char *cvfs_signal_name(int sig) {
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGFPE: return "SIGFPE";
    case SIGABRT: return "SIGABRT";
    case SIGSYS: return "SIGSYS";
    default: return "signal";
    }
}

static void cvfs_crash_handler(int sig, siginfo_t *info, void *context) {
    (void)context;
    int saved = errno;
    char line[384];
    size_t n = 0;
    n = cvfs_append(line, n, sizeof line, cvfs_program);
    n = cvfs_append(line, n, sizeof line, ": fatal: ");
    n = cvfs_append(line, n, sizeof line, cvfs_signal_name(sig));
    switch (sig) {
    case SIGSEGV:
    case SIGBUS:
        n = cvfs_append(line, n, sizeof line, " (a bad memory access at 0x");
        n = cvfs_append_number(line, n, sizeof line, (unsigned long)info->si_addr, 16);
        n = cvfs_append(line, n, sizeof line, ")");
        break;
    case SIGILL:
    case SIGTRAP:
        n = cvfs_append(line, n, sizeof line, " (a failed runtime check: its message, if it has one, is just above)");
        break;
    case SIGSYS:
        n = cvfs_append(line, n, sizeof line, " (system call ");
        n = cvfs_append_number(line, n, sizeof line, (unsigned long)info->si_syscall, 10);
        n = cvfs_append(line, n, sizeof line, " is outside the seccomp allowlist)");
        break;
    case SIGABRT:
        n = cvfs_append(line, n, sizeof line, " (abort)");
        break;
    case SIGFPE:
        n = cvfs_append(line, n, sizeof line, " (an arithmetic fault)");
        break;
    }
    char name[17] = {0};
    prctl(PR_GET_NAME, name, 0, 0, 0);
    n = cvfs_append(line, n, sizeof line, " in thread ");
    n = cvfs_append(line, n, sizeof line, name[0] ? name : "?");
    n = cvfs_append(line, n, sizeof line, " (tid ");
    pid_t tid = (pid_t)syscall(SYS_gettid);
    n = cvfs_append_number(line, n, sizeof line, (unsigned long)tid, 10);
    n = cvfs_append(line, n, sizeof line, ")\n");
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(STDERR_FILENO, line + done, n - done);
        if (w <= 0) break;
        done += (size_t)w;
    }
    // Then the signal ends the process as it would have: the default action, raised again on this thread
    // (pending until the handler returns; a fault would recur anyway).
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    syscall(SYS_tgkill, getpid(), tid, sig);
    errno = saved;
}

void cvfs_install_crash_handlers(const char *program) {
    if (program) cvfs_program = program;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = cvfs_crash_handler;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    int signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGFPE, SIGABRT, SIGSYS};
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++) sigaction(signals[i], &action, NULL);
}

#define CVFS_ALTERNATE_STACK_SIZE (64 * 1024)

void *cvfs_alternate_signal_stack(void) {
    void *stack = mmap(NULL, CVFS_ALTERNATE_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (stack == MAP_FAILED) return NULL;
    stack_t ss = {.ss_sp = stack, .ss_size = CVFS_ALTERNATE_STACK_SIZE, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) {
        munmap(stack, CVFS_ALTERNATE_STACK_SIZE);
        return NULL;
    }
    return stack;
}

void cvfs_free_alternate_signal_stack(void *stack) {
    if (!stack) return;
    stack_t ss = {.ss_sp = NULL, .ss_size = 0, .ss_flags = SS_DISABLE};
    sigaltstack(&ss, NULL);
    munmap(stack, CVFS_ALTERNATE_STACK_SIZE);
}

// MARK: Probes

static int cvfs_result(long r) { return r < 0 ? errno : 0; }

int cvfs_probe_unshare(int flags) { return cvfs_result(unshare(flags)); }

int cvfs_probe_clone(unsigned long flags) {
    long child = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (child == 0) _exit(0);
    if (child < 0) return errno;
    waitpid((pid_t)child, NULL, __WALL);
    return 0;
}

int cvfs_probe_clone3_process(void) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    long child = syscall(SYS_clone3, &args, sizeof args);
    if (child == 0) _exit(0);
    if (child < 0) return errno;
    waitpid((pid_t)child, NULL, __WALL);
    return 0;
}

int cvfs_probe_prctl(int option) {
    if (option == PR_SET_NAME) return cvfs_result(prctl(PR_SET_NAME, "probe", 0, 0, 0));
    return cvfs_result(prctl(option, 1, 0, 0, 0));
}

int cvfs_probe_ioctl_tiocsti(void) {
    char c = 'x';
    return cvfs_result(ioctl(0, TIOCSTI, &c));
}

int cvfs_probe_tgkill(int other) {
    pid_t pid = getpid();
    if (other) return cvfs_result(syscall(SYS_tgkill, pid + 1, pid + 1, 0));
    return cvfs_result(syscall(SYS_tgkill, pid, (pid_t)syscall(SYS_gettid), 0));
}

const int CVFS_CLONE_NEWUSER = CLONE_NEWUSER;
const int CVFS_CLONE_NEWNS = CLONE_NEWNS;
const int CVFS_CLONE_FS = CLONE_FS;
const int CVFS_PR_SET_DUMPABLE = PR_SET_DUMPABLE;
const int CVFS_PR_SET_NAME = PR_SET_NAME;

// MARK: Mounts

struct cvfs_mount_attr {
    uint64_t attr_set;
    uint64_t attr_clr;
    uint64_t propagation;
    uint64_t userns_fd;
};

#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#define CVFS_MOUNT_ATTR_RDONLY 0x00000001
#define CVFS_MOUNT_ATTR_NODEV 0x00000004
#define CVFS_AT_RECURSIVE 0x8000

int cvfs_mount_nodev(const char *path) {
    struct cvfs_mount_attr attr = {.attr_set = CVFS_MOUNT_ATTR_NODEV};
    if (syscall(SYS_mount_setattr, AT_FDCWD, path, CVFS_AT_RECURSIVE, &attr, sizeof attr) == 0) return 0;
    if (errno != ENOSYS) return -1;
    struct statvfs info;
    if (statvfs(path, &info) != 0) return -1;
    unsigned long flags = MS_REMOUNT | MS_BIND | MS_NODEV;
    if (info.f_flag & ST_RDONLY) flags |= MS_RDONLY;
    if (info.f_flag & ST_NOSUID) flags |= MS_NOSUID;
    if (info.f_flag & ST_NOEXEC) flags |= MS_NOEXEC;
    if (info.f_flag & ST_NOATIME) flags |= MS_NOATIME;
    if (info.f_flag & ST_NODIRATIME) flags |= MS_NODIRATIME;
    if (info.f_flag & ST_RELATIME) flags |= MS_RELATIME;
    return mount(NULL, path, NULL, flags, NULL);
}

// MARK: Fuzzing helpers

#include <ftw.h>

static int cvfs_remove_entry(const char *path, const struct stat *info, int type, struct FTW *ftw) {
    (void)info;
    (void)type;
    if (ftw->level == 0) return 0;
    return remove(path) == 0 ? 0 : 0;
}

int cvfs_fuzz_reset_tree(const char *path) {
    mkdir(path, 0755);
    nftw(path, cvfs_remove_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    int dir = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) return -1;
    int fd = openat(dir, "file", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        const char text[] = "some data in a file\n";
        write(fd, text, sizeof text - 1);
        close(fd);
    }
    mkdirat(dir, "dir", 0755);
    fd = openat(dir, "dir/inner", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
    symlinkat("file", dir, "link");
    symlinkat("/etc/passwd", dir, "outside");
    mknodat(dir, "fifo", S_IFIFO | 0644, 0);
    close(dir);
    return 0;
}

int cvfs_fuzz_confine(const char *const *writable, size_t count, const char *scratch, unsigned scratch_mib) {
    if (unshare(CLONE_NEWNS) != 0) return -1;
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) return -1;
    // Binds first, while they can still be made writable; then everything read-only; then the binds back.
    for (size_t i = 0; i < count; i++) {
        if (mount(writable[i], writable[i], NULL, MS_BIND, NULL) != 0) return -1;
    }
    struct cvfs_mount_attr ro = {.attr_set = CVFS_MOUNT_ATTR_RDONLY};
    if (syscall(SYS_mount_setattr, AT_FDCWD, "/", CVFS_AT_RECURSIVE, &ro, sizeof ro) != 0) return -1;
    struct cvfs_mount_attr rw = {.attr_clr = CVFS_MOUNT_ATTR_RDONLY};
    for (size_t i = 0; i < count; i++) {
        if (syscall(SYS_mount_setattr, AT_FDCWD, writable[i], 0, &rw, sizeof rw) != 0) return -1;
    }
    char options[64];
    snprintf(options, sizeof options, "size=%um,mode=0755", scratch_mib);
    return mount("fuzz-scratch", scratch, "tmpfs", MS_NOSUID, options);
}

// --- stopping on SIGTERM and SIGINT ------------------------------------------------------------------------

int cvfs_stop_signalfd(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return -1;
    return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

ssize_t cvfs_read_within(int fd, void *buffer, size_t count, int milliseconds) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int n;
    do { n = poll(&p, 1, milliseconds); } while (n < 0 && errno == EINTR);
    if (n <= 0) return n;
    return read(fd, buffer, count);
}

const char *cvfs_errno_name(int e) {
    const char *name = strerrorname_np(e);
    return name ? name : "";
}

int cvfs_stop_signal_read(int fd) {
    struct signalfd_siginfo info;
    ssize_t n = read(fd, &info, sizeof info);
    return n == (ssize_t)sizeof info ? (int)info.ssi_signo : 0;
}

int cvfs_wait_readable(int fd, int stop_fd) {
    struct pollfd fds[2] = { { .fd = fd, .events = POLLIN }, { .fd = stop_fd, .events = POLLIN } };
    for (;;) {
        int n = poll(fds, 2, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -1;
        if (fds[1].revents) return 0;
        if (fds[0].revents) return 1;
    }
}

static volatile pid_t cvfs_stop_child;

static void cvfs_forward_stop(int sig) {
    int saved = errno;
    if (cvfs_stop_child > 0) kill(cvfs_stop_child, sig);
    errno = saved;
}

void cvfs_forward_stop_signals(pid_t child) {
    cvfs_stop_child = child;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = cvfs_forward_stop;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGUSR1, &action, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

long long cvfs_fstatfs_type(int fd) {
    struct statfs s;
    if (fstatfs(fd, &s) != 0) return -1;
    return (long long)(unsigned int)s.f_type;
}
