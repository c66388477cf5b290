// SPDX-License-Identifier: Apache-2.0
// Calls and macros that Swift cannot import directly.
#ifndef CVFS_SYSCALLS_H
#define CVFS_SYSCALLS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <linux/stat.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

/// Reads `errno` of the calling thread.
int cvfs_errno(void);
/// Sets `errno` of the calling thread (used by tests of the retry logic).
void cvfs_set_errno(int value);

/// getdents64(2) with no libc wrapper assumptions.
ssize_t cvfs_getdents64(int fd, void *buffer, size_t count);

/// renameat2(2).
int cvfs_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);

/// setresuid(2) and setresgid(2) for the calling thread only: the raw syscalls, not glibc's wrappers,
/// which change every thread of the process.
int cvfs_setresuid_thread(uid_t ruid, uid_t euid, uid_t suid);
int cvfs_setresgid_thread(gid_t rgid, gid_t egid, gid_t sgid);

/// statx(2) returning the mount id as well (STATX_MNT_ID).
int cvfs_statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *out);

/// sendmsg(2) with `fd_count` descriptors attached as SCM_RIGHTS.
ssize_t cvfs_send_with_fds(int socket, const void *data, size_t length, const int *fds, size_t fd_count);

/// recvmsg(2) with MSG_CMSG_CLOEXEC, accepting up to `max_fds` descriptors passed with SCM_RIGHTS.
/// On return `*fd_count` holds how many arrived, and `*truncated` is non-zero when the kernel cut the
/// data or the control message short (every fd that did arrive is still returned so it can be closed).
ssize_t cvfs_recv_with_fds(int socket, void *data, size_t length, int *fds, size_t max_fds, size_t *fd_count,
                           int *truncated);

/// GNU extensions that Swift's Glibc module does not export (it is built without _GNU_SOURCE).
uint64_t cvfs_makedev(unsigned int major, unsigned int minor);
int cvfs_memfd_create(const char *name, unsigned int flags);
int cvfs_accept4(int socket, int flags);
int cvfs_set_thread_name(const char *name);
extern const unsigned int CVFS_MFD_CLOEXEC;

/// fallocate(2), copy_file_range(2), syncfs(2): GNU extensions.
int cvfs_fallocate(int fd, int mode, int64_t offset, int64_t length);
extern const int CVFS_FALLOC_FL_ZERO_RANGE;
ssize_t cvfs_copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t length, unsigned int flags);
int cvfs_syncfs(int fd);
/// flock(2) (Swift sees only `struct flock` under that name).
int cvfs_flock(int fd, int operation);

/// Open-file-description record locks (F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW). `command` is 0, 1 or 2.
/// `*type`, `*start`, `*length`: the lock in and, for GETLK, the conflicting lock out; `*pid` its holder (-1: an OFD lock).
int cvfs_ofd_lock(int fd, int command, short *type, int64_t *start, int64_t *length, int *pid);

/// setgroups(2) for the calling thread only (the raw syscall).
int cvfs_setgroups_thread(size_t count, const gid_t *groups);

extern const int CVFS_O_TMPFILE;
extern const unsigned int CVFS_RENAME_NOREPLACE;
extern const unsigned int CVFS_RENAME_EXCHANGE;
extern const unsigned int CVFS_RENAME_WHITEOUT;

/// A `struct file_handle` with room for the largest handle (MAX_HANDLE_SZ bytes), as a plain value.
typedef struct {
    unsigned char bytes[8 + 128];
} cvfs_file_handle;

/// name_to_handle_at(2) into `handle`; `*mount_id` receives the mount id.
int cvfs_name_to_handle_at(int dirfd, const char *path, cvfs_file_handle *handle, int *mount_id, int flags);
/// open_by_handle_at(2): needs CAP_DAC_READ_SEARCH; `mount_fd` is any descriptor on the handle's mount.
int cvfs_open_by_handle_at(int mount_fd, const cvfs_file_handle *handle, int flags);

/// malloc_trim(0): gives the free pages of every malloc arena back to the kernel.
int cvfs_malloc_trim(void);
/// mallinfo2's uordblks + hblkhd: bytes malloc has handed out (small and mmapped) and not had back.
size_t cvfs_heap_in_use(void);

/// Gives the calling thread its own umask and working directory (unshare(CLONE_FS)); cheap once done.
int cvfs_unshare_fs(void);

/// Sandbox set-up: the calls Swift cannot import (fork is unavailable in Swift) or imports poorly.
/// fork(2); only while the process has one thread.
pid_t cvfs_fork(void);
/// unshare(2) with CLONE_NEWUSER (user), CLONE_NEWPID, CLONE_NEWNS and CLONE_NEWNET (the rest) as chosen.
int cvfs_unshare_namespaces(int user, int rest);
/// mount(2).
int cvfs_mount(const char *source, const char *target, const char *type, unsigned long flags, const void *data);
/// Makes every mount of this namespace a slave (MS_REC | MS_SLAVE on "/"), so nothing propagates back.
int cvfs_make_mounts_private(void);
/// Mounts a new proc at `target` (nosuid, nodev, noexec).
int cvfs_mount_proc(const char *target);
/// Bind-mounts `path` on itself, recursively.
int cvfs_bind_self(const char *path);
/// With the working directory at the new root: pivot_root(".", "."), then detaches the old root.
int cvfs_pivot_to_cwd(void);
/// prctl(PR_SET_PDEATHSIG, signal).
int cvfs_set_parent_death_signal(int signal);
/// pipe2(fds, O_CLOEXEC).
int cvfs_pipe_cloexec(int fds[2]);
/// prctl(PR_SET_NO_NEW_PRIVS, 1).
int cvfs_set_no_new_privs(void);

/// Thread id of the caller (gettid(2)).
pid_t cvfs_gettid(void);

/// Constants that Swift imports poorly or not at all.
extern const int CVFS_AT_EMPTY_PATH;
extern const int CVFS_AT_SYMLINK_NOFOLLOW;
extern const int CVFS_AT_FDCWD;
extern const int CVFS_O_PATH;
extern const int CVFS_O_NOFOLLOW;
extern const int CVFS_O_CLOEXEC;
extern const int CVFS_O_DIRECTORY;
extern const unsigned int CVFS_STATX_BASIC_STATS;
extern const unsigned int CVFS_STATX_MNT_ID;
extern const unsigned int CVFS_STATX_BTIME;
extern const int CVFS_AT_STATX_SYNC_TYPE;

#endif

/// Installs handlers for the fatal signals (SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGFPE, SIGABRT, SIGSYS) that
/// write one line naming the signal, its cause and the thread to standard error, then let the signal end the
/// process as it would have. They use only write, prctl(PR_GET_NAME), gettid, getpid, rt_sigaction and tgkill,
/// all allowed under every seccomp mode; they replace the Swift runtime's crash handler, which needs calls
/// (socketpair, a helper process) that the filter forbids. `program` prefixes the line.
void cvfs_install_crash_handlers(const char *program);

/// Blocks SIGTERM, SIGINT and SIGUSR1 (the statistics dump) in the calling thread (threads started later inherit
/// the mask) and returns a signalfd that becomes readable when one arrives (close-on-exec, non-blocking), or -1
/// with errno.
int cvfs_stop_signalfd(void);
/// Reads one pending signal from `fd` (a cvfs_stop_signalfd): its number, or 0 when none is pending.
int cvfs_stop_signal_read(int fd);
/// Waits until `fd` or `stop_fd` is readable: 1 for fd, 0 for stop_fd (stop_fd wins a tie), -1 with errno.
int cvfs_wait_readable(int fd, int stop_fd);
/// In a parent that only waits for `child`: SIGTERM, SIGINT and SIGUSR1 are passed on to the child (whose exit
/// the parent then reports), not taken by the parent.
void cvfs_forward_stop_signals(pid_t child);
/// Reads what `fd` has within `milliseconds`: the bytes read, 0 when nothing came, -1 with errno.
ssize_t cvfs_read_within(int fd, void *buffer, size_t count, int milliseconds);
/// errno's symbolic name ("ENOENT"), or "" for a value glibc does not know (strerrorname_np).
const char *cvfs_errno_name(int e);
/// Gives the calling thread an alternate signal stack, so that a stack overflow can still be reported.
/// Returns the stack, to be passed to `cvfs_free_alternate_signal_stack` when the thread ends.
void *cvfs_alternate_signal_stack(void);
void cvfs_free_alternate_signal_stack(void *stack);

/// Test hooks (`--debug-probe`): one system call with the given arguments, made after the filter is in place.
/// Each returns 0 on success or an errno value.
int cvfs_probe_unshare(int flags);
int cvfs_probe_clone(unsigned long flags);
int cvfs_probe_clone3_process(void);
int cvfs_probe_prctl(int option);
int cvfs_probe_ioctl_tiocsti(void);
int cvfs_probe_tgkill(int other);
extern const int CVFS_CLONE_NEWUSER;
extern const int CVFS_CLONE_NEWNS;
extern const int CVFS_CLONE_FS;
extern const int CVFS_PR_SET_DUMPABLE;
extern const int CVFS_PR_SET_NAME;

/// Marks the mount at `path` and every mount under it nodev (mount_setattr with AT_RECURSIVE, or a bind
/// remount of `path` alone where that call is missing), keeping its other flags: device nodes there can still be
/// made, never opened.
int cvfs_mount_nodev(const char *path);

/// Fuzzing helpers (the fuzz targets only).
/// Empties `path` (creating it) and puts a small tree in it: files, a directory, a symlink, a FIFO.
int cvfs_fuzz_reset_tree(const char *path);
/// Shuts the calling process (which must have one thread) into a mount namespace where every mount is
/// read-only except the `count` directories of `writable`, and `scratch` is a tmpfs of `scratch_mib` MiB of its
/// own: a fuzzed file server running as root cannot harm the host's files, nor fill its disk, whatever it is
/// tricked into.
int cvfs_fuzz_confine(const char *const *writable, size_t count, const char *scratch, unsigned scratch_mib);

/// fstatfs(2)'s f_type (the file system's magic number) of `fd`'s file, or -1 with errno set. (Swift cannot name
/// `struct statfs` apart from the function of the same name.)
long long cvfs_fstatfs_type(int fd);
