// SPDX-License-Identifier: Apache-2.0
#define _GNU_SOURCE
#include "cvfs_syscalls.h"
#include "cvfs_kernel.h"
#include "cvfs_vhost_user.h"

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
const int CVFS_O_DIRECTORY = O_DIRECTORY;
const unsigned int CVFS_STATX_BASIC_STATS = STATX_BASIC_STATS;
const unsigned int CVFS_STATX_MNT_ID = STATX_MNT_ID;

// The FUSE structs the server reads and writes, checked against their ABI sizes.
_Static_assert(sizeof(struct fuse_in_header) == 40, "fuse_in_header");
_Static_assert(sizeof(struct fuse_out_header) == 16, "fuse_out_header");
_Static_assert(sizeof(struct fuse_init_in) == 64, "fuse_init_in (7.36+)");
_Static_assert(sizeof(struct fuse_init_out) == 64, "fuse_init_out");
_Static_assert(sizeof(struct fuse_entry_out) == 128, "fuse_entry_out");
_Static_assert(sizeof(struct fuse_attr_out) == 104, "fuse_attr_out");
_Static_assert(sizeof(struct vring_desc) == 16, "vring_desc");
_Static_assert(sizeof(struct vring_used_elem) == 8, "vring_used_elem");
