// SPDX-License-Identifier: Apache-2.0
//
// Syscall-level checks for the conformance suite, run in the guest on the mount and on the host on a local
// directory: each prints what it observed (results and errno names), and the two outputs are compared.
// Built static so it runs in the busybox guest: gcc -static -O2 -o posixcheck posixcheck.c
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <grp.h>
#include <signal.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static const char *name(int e) {
    switch (e) {
    case 0: return "OK";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EAGAIN: return "EAGAIN";
    case EEXIST: return "EEXIST";
    case EXDEV: return "EXDEV";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ENOTEMPTY: return "ENOTEMPTY";
    case ELOOP: return "ELOOP";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case EROFS: return "EROFS";
    case EBADF: return "EBADF";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ENXIO: return "ENXIO";
    case ENODATA: return "ENODATA";
    case EINTR: return "EINTR";
    case ENFILE: return "ENFILE";
    case EMFILE: return "EMFILE";
    default: return "E?";
    }
}

#define SHOW(label, call) do { errno = 0; long r_ = (long)(call); printf("%s: %s\n", label, r_ < 0 ? name(errno) : "OK"); } while (0)

static int cmd_errors(const char *dir) {
    if (chdir(dir)) return 1;
    char longname[300];
    memset(longname, 'n', 299);
    longname[299] = 0;
    mkdir("e-dir", 0755);
    close(open("e-dir/file", O_CREAT | O_WRONLY, 0644));
    close(open("e-file", O_CREAT | O_WRONLY, 0644));
    symlink("e-loop", "e-loop");
    SHOW("open missing", open("e-missing", O_RDONLY));
    SHOW("mkdir existing", mkdir("e-dir", 0755));
    SHOW("create excl existing", open("e-file", O_CREAT | O_EXCL | O_WRONLY, 0644));
    SHOW("rmdir non-empty", rmdir("e-dir"));
    SHOW("rmdir a file", rmdir("e-file"));
    SHOW("unlink a directory", unlink("e-dir"));
    SHOW("open through a file", open("e-file/x", O_RDONLY));
    SHOW("open dir for writing", open("e-dir", O_WRONLY));
    SHOW("open O_DIRECTORY on a file", open("e-file", O_RDONLY | O_DIRECTORY));
    SHOW("open symlink loop", open("e-loop", O_RDONLY));
    SHOW("open symlink O_NOFOLLOW", open("e-loop", O_RDONLY | O_NOFOLLOW));
    SHOW("name too long", open(longname, O_CREAT | O_WRONLY, 0644));
    SHOW("rename dir over file", rename("e-dir", "e-file"));
    SHOW("rename file over dir", rename("e-file", "e-dir"));
    SHOW("rename dir into itself", rename("e-dir", "e-dir/sub"));
    SHOW("link a directory", link("e-dir", "e-dirlink"));
    SHOW("link existing name", link("e-file", "e-dir/file"));
    SHOW("readlink a file", readlink("e-file", longname, sizeof longname));
    SHOW("truncate a directory", truncate("e-dir", 0));
    return 0;
}

static int cmd_rename2(const char *dir) {
    if (chdir(dir)) return 1;
    int fd = open("r-a", O_CREAT | O_WRONLY | O_TRUNC, 0644); write(fd, "A", 1); close(fd);
    fd = open("r-b", O_CREAT | O_WRONLY | O_TRUNC, 0644); write(fd, "BB", 2); close(fd);
    SHOW("noreplace onto existing", syscall(SYS_renameat2, AT_FDCWD, "r-a", AT_FDCWD, "r-b", RENAME_NOREPLACE));
    SHOW("exchange", syscall(SYS_renameat2, AT_FDCWD, "r-a", AT_FDCWD, "r-b", RENAME_EXCHANGE));
    struct stat st;
    stat("r-a", &st);
    printf("r-a size after exchange: %ld\n", (long)st.st_size);
    SHOW("exchange with missing", syscall(SYS_renameat2, AT_FDCWD, "r-a", AT_FDCWD, "r-none", RENAME_EXCHANGE));
    SHOW("noreplace onto new name", syscall(SYS_renameat2, AT_FDCWD, "r-a", AT_FDCWD, "r-c", RENAME_NOREPLACE));
    return 0;
}

static int cmd_unlinked(const char *dir) {
    if (chdir(dir)) return 1;
    int fd = open("u-file", O_CREAT | O_RDWR | O_TRUNC, 0644);
    write(fd, "still here", 10);
    SHOW("unlink while open", unlink("u-file"));
    char buf[16] = {0};
    printf("read after unlink: %zd %s\n", pread(fd, buf, 10, 0), buf);
    SHOW("write after unlink", pwrite(fd, "again", 5, 10));
    struct stat st;
    fstat(fd, &st);
    printf("fstat after unlink: size %ld links %ld\n", (long)st.st_size, (long)st.st_nlink);
    close(fd);
    // The same with a file opened without O_CREAT, read again after its cached pages are dropped: whatever
    // keeps an unlinked file's data must not depend on how it was opened.
    int old = open("u-old", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    write(old, "old data", 8);
    close(old);
    old = open("u-old", O_RDONLY);
    SHOW("unlink while open (opened without O_CREAT)", unlink("u-old"));
    posix_fadvise(old, 0, 0, POSIX_FADV_DONTNEED);
    memset(buf, 0, sizeof buf);
    printf("read after unlink, its pages dropped: %zd %s\n", pread(old, buf, 8, 0), buf);
    close(old);
    return 0;
}

static int cmd_sparse(const char *dir) {
    if (chdir(dir)) return 1;
    int fd = open("s-file", O_CREAT | O_RDWR | O_TRUNC, 0644);
    pwrite(fd, "head", 4, 0);
    pwrite(fd, "tail", 4, 4 << 20);
    printf("data at 0: %ld\n", (long)lseek(fd, 0, SEEK_DATA));
    printf("hole after 0: %ld\n", (long)lseek(fd, 0, SEEK_HOLE));
    printf("data after 4096: %ld\n", (long)lseek(fd, 4096, SEEK_DATA));
    errno = 0;
    off_t past = lseek(fd, (4 << 20) + 100, SEEK_DATA);
    printf("data past end: %ld %s\n", (long)past, past < 0 ? name(errno) : "");
    SHOW("punch hole", fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4 << 20, 4096));
    struct stat st;
    fstat(fd, &st);
    printf("size after punch: %ld\n", (long)st.st_size);
    SHOW("keep-size allocate", fallocate(fd, FALLOC_FL_KEEP_SIZE, 8 << 20, 4096));
    fstat(fd, &st);
    printf("size after keep-size: %ld\n", (long)st.st_size);
    SHOW("allocate grows", fallocate(fd, 0, 0, 6 << 20));
    fstat(fd, &st);
    printf("size after allocate: %ld\n", (long)st.st_size);
    close(fd);
    return 0;
}

// written DIR: SEEK_DATA and SEEK_HOLE on a file just written, whose pages a writeback cache may still hold:
// only what every file system must answer (data where it was written, the hole, if any, after it).
static int cmd_written(const char *dir) {
    if (chdir(dir)) return 1;
    int fd = open("w-file", O_CREAT | O_RDWR | O_TRUNC, 0644);
    pwrite(fd, "head", 4, 0);
    pwrite(fd, "tail", 4, 4 << 20);
    printf("data at 0: %ld\n", (long)lseek(fd, 0, SEEK_DATA));
    off_t hole = lseek(fd, 0, SEEK_HOLE);
    printf("first hole after the head and not past the end: %s\n", hole >= 4 && hole <= (4 << 20) + 4 ? "yes" : "no");
    off_t data = lseek(fd, 4096, SEEK_DATA);
    printf("data from 4096 found before the tail's end: %s\n", data >= 4096 && data <= (4 << 20) + 3 ? "yes" : "no");
    close(fd);
    return 0;
}

static int cmd_append(const char *dir, int writers) {
    if (chdir(dir)) return 1;
    unlink("a-log");
    close(open("a-log", O_CREAT | O_WRONLY, 0644));
    for (int w = 0; w < writers; w++) {
        if (fork() == 0) {
            int fd = open("a-log", O_WRONLY | O_APPEND);
            char line[64];
            for (int i = 0; i < 500; i++) {
                int n = snprintf(line, sizeof line, "writer %02d line %04d ........................\n", w, i);
                write(fd, line, n);
            }
            _exit(0);
        }
    }
    while (wait(NULL) > 0) {}
    FILE *f = fopen("a-log", "r");
    char line[128];
    int good = 0, bad = 0, counts[64] = {0};
    while (fgets(line, sizeof line, f)) {
        int w, i;
        if (sscanf(line, "writer %d line %d", &w, &i) == 2 && strlen(line) == 46 && w < 64) { good++; counts[w]++; } else bad++;
    }
    fclose(f);
    int even = 1;
    for (int w = 0; w < writers; w++) even &= counts[w] == 500;
    printf("append: %d whole lines, %d torn, every writer complete: %s\n", good, bad, even ? "yes" : "no");
    return 0;
}

// mmap DIR [fault]: writes through a shared mapping after setting an old mtime. With "fault", also whether the
// mtime changed at the write fault, before msync: a local file system changes it there; a FUSE guest without a
// writeback cache marks its inodes S_NOCMTIME and sees the new time only once the pages reach the server.
static int cmd_mmap(const char *dir, bool at_fault) {
    if (chdir(dir)) return 1;
    int fd = open("m-file", O_CREAT | O_RDWR | O_TRUNC, 0644);
    ftruncate(fd, 8192);
    // An old modification time first: a write through the mapping must change it, as a write(2) would.
    struct timespec old[2] = { { 1000000000, 0 }, { 1000000000, 0 } };
    futimens(fd, old);
    char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { printf("mmap: %s\n", name(errno)); return 0; }
    memcpy(p + 4096, "written through mmap", 20);
    struct stat st;
    fstat(fd, &st);
    if (at_fault) printf("mtime changed by the mapped write, before msync: %s\n", st.st_mtim.tv_sec != 1000000000 ? "yes" : "no");
    SHOW("msync", msync(p, 8192, MS_SYNC));
    fstat(fd, &st);
    printf("mtime changed by the mapped write, after msync: %s\n", st.st_mtim.tv_sec != 1000000000 ? "yes" : "no");
    munmap(p, 8192);
    close(fd);
    stat("m-file", &st);
    printf("mtime changed, after close: %s\n", st.st_mtim.tv_sec != 1000000000 ? "yes" : "no");
    fd = open("m-file", O_RDONLY);
    char buf[32] = {0};
    pread(fd, buf, 20, 4096);
    printf("read back: %s\n", buf);
    close(fd);
    return 0;
}

static int cmd_tmpfile(const char *dir) {
    int fd = open(dir, O_TMPFILE | O_RDWR, 0600);
    if (fd < 0) { printf("O_TMPFILE: %s\n", name(errno)); return 0; }
    write(fd, "anonymous", 9);
    struct stat st;
    fstat(fd, &st);
    printf("tmpfile links %ld size %ld\n", (long)st.st_nlink, (long)st.st_size);
    char path[64], target[4096];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    snprintf(target, sizeof target, "%s/t-named", dir);
    SHOW("link tmpfile into place", linkat(AT_FDCWD, path, AT_FDCWD, target, AT_SYMLINK_FOLLOW));
    close(fd);
    fd = open(target, O_RDONLY);
    char buf[16] = {0};
    read(fd, buf, 9);
    printf("named tmpfile reads: %s\n", buf);
    close(fd);
    return 0;
}

static int cmd_times(const char *dir) {
    if (chdir(dir)) return 1;
    close(open("t-file", O_CREAT | O_WRONLY, 0644));
    struct timespec set[2] = {{1000000000, 123456789}, {1200000000, 987654321}};
    SHOW("utimensat both", utimensat(AT_FDCWD, "t-file", set, 0));
    struct stat st;
    stat("t-file", &st);
    printf("atime %ld.%09ld mtime %ld.%09ld\n", (long)st.st_atim.tv_sec, st.st_atim.tv_nsec, (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    struct timespec omit[2] = {{0, UTIME_OMIT}, {1300000000, 5}};
    SHOW("utimensat omit atime", utimensat(AT_FDCWD, "t-file", omit, 0));
    stat("t-file", &st);
    printf("atime %ld mtime %ld.%09ld\n", (long)st.st_atim.tv_sec, (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    struct timespec now[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
    SHOW("utimensat now atime", utimensat(AT_FDCWD, "t-file", now, 0));
    stat("t-file", &st);
    printf("atime is recent: %s, mtime kept: %s\n", st.st_atim.tv_sec > 1600000000 ? "yes" : "no", st.st_mtim.tv_sec == 1300000000 ? "yes" : "no");
    symlink("t-file", "t-link");
    SHOW("lutimes on a symlink", utimensat(AT_FDCWD, "t-link", set, AT_SYMLINK_NOFOLLOW));
    lstat("t-link", &st);
    printf("symlink mtime %ld\n", (long)st.st_mtim.tv_sec);
    return 0;
}

// Locks between two processes of this machine: the parent holds, the child probes.
static int cmd_locks(const char *file) {
    int fd = open(file, O_CREAT | O_RDWR, 0644);
    struct flock wr = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
    SHOW("parent write-locks 0-99", fcntl(fd, F_SETLK, &wr));
    SHOW("parent flock LOCK_EX", flock(fd, LOCK_EX | LOCK_NB));
    pid_t child = fork();
    if (child == 0) {
        int cfd = open(file, O_RDWR);
        struct flock probe = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 50, .l_len = 10};
        SHOW("child F_SETLK on 50-59", fcntl(cfd, F_SETLK, &probe));
        struct flock q = probe;
        fcntl(cfd, F_GETLK, &q);
        printf("child F_GETLK sees: %s %ld-%ld\n", q.l_type == F_WRLCK ? "write lock" : q.l_type == F_UNLCK ? "unlocked" : "?", (long)q.l_start, (long)(q.l_start + q.l_len - 1));
        struct flock free_ = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 200, .l_len = 10};
        SHOW("child F_SETLK on 200-209", fcntl(cfd, F_SETLK, &free_));
        SHOW("child flock LOCK_EX|LOCK_NB", flock(cfd, LOCK_EX | LOCK_NB));
        fflush(stdout);
        // Now wait: the parent releases after a moment; F_SETLKW must then succeed.
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        SHOW("child F_SETLKW on 50-59", fcntl(cfd, F_SETLKW, &probe));
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("child waited for the release: %s\n", (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 >= 300 ? "yes" : "no");
        _exit(0);
    }
    usleep(1000000);
    // While the child waits, the file system still answers other requests.
    struct stat st;
    SHOW("parent stat while the child waits", stat(file, &st));
    struct flock un = {.l_type = F_UNLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
    // The child prints as soon as it has the lock: report the unlock after it is done, for a fixed order.
    errno = 0;
    int unlocked = fcntl(fd, F_SETLK, &un);
    int unlock_errno = errno;
    waitpid(child, NULL, 0);
    printf("parent unlocks: %s\n", unlocked < 0 ? name(unlock_errno) : "OK");
    // Closing releases the owner's locks: a new process can take the whole file.
    close(fd);
    if (fork() == 0) {
        int cfd = open(file, O_RDWR);
        struct flock all = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
        SHOW("after close, a new process locks the whole file", fcntl(cfd, F_SETLK, &all));
        _exit(0);
    }
    while (wait(NULL) > 0) {}
    return 0;
}

// The guest probes a lock a host process holds (the host holds byte 0-9 with fcntl and the file with flock).
static int cmd_probe(const char *file) {
    int fd = open(file, O_RDWR);
    struct flock probe = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
    SHOW("F_SETLK on a range a host process holds", fcntl(fd, F_SETLK, &probe));
    SHOW("flock on a file a host process holds", flock(fd, LOCK_EX | LOCK_NB));
    return 0;
}

// Holds a lock until killed (the host side of cmd_probe).
static int cmd_hold(const char *file) {
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_UNBLOCK, &all, NULL);  // whatever mask we inherited, a TERM must end us
    int fd = open(file, O_CREAT | O_RDWR, 0644);
    struct flock wr = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
    if (fcntl(fd, F_SETLK, &wr)) { perror("hold"); return 1; }
    // Where flock and POSIX locks are one lock space (GlusterFS keeps a flock as a POSIX lock of the whole
    // file), the flock conflicts with our own fcntl lock: then the fcntl lock alone, which conflicts with both.
    if (flock(fd, LOCK_EX | LOCK_NB)) printf("holding (fcntl only: %s)\n", name(errno));
    else printf("holding\n");
    fflush(stdout);
    pause();
    return 0;
}

static int cmd_xattr(const char *file) {
    close(open(file, O_CREAT | O_WRONLY, 0644));
    SHOW("setxattr user.test", setxattr(file, "user.test", "value-1", 7, 0));
    SHOW("setxattr create existing", setxattr(file, "user.test", "v", 1, XATTR_CREATE));
    SHOW("setxattr replace missing", setxattr(file, "user.other", "v", 1, XATTR_REPLACE));
    char buf[64] = {0};
    printf("getxattr size query: %zd\n", getxattr(file, "user.test", NULL, 0));
    errno = 0;
    printf("getxattr into 3 bytes: %s\n", getxattr(file, "user.test", buf, 3) < 0 ? name(errno) : "OK");
    printf("getxattr: %zd %s\n", getxattr(file, "user.test", buf, sizeof buf), buf);
    SHOW("getxattr missing", getxattr(file, "user.missing", buf, sizeof buf));
    char list[256];
    ssize_t n = listxattr(file, list, sizeof list);
    printf("listxattr has user.test: %s\n", n > 0 && memmem(list, n, "user.test", 10) ? "yes" : "no");
    SHOW("removexattr", removexattr(file, "user.test"));
    SHOW("removexattr again", removexattr(file, "user.test"));
    return 0;
}

// POSIX ACLs, written in the kernel's xattr format (posix_acl_xattr_header + entries, sorted by tag).
static int set_acl(const char *path, const char *name, const unsigned short (*entries)[3], int count) {
    unsigned char buf[4 + 8 * 16];
    unsigned int version = 2;
    memcpy(buf, &version, 4);
    for (int i = 0; i < count; i++) {
        unsigned short tag = entries[i][0], perm = entries[i][1];
        unsigned int id = entries[i][2] == 0xffff ? 0xffffffffu : entries[i][2];
        memcpy(buf + 4 + 8 * i, &tag, 2);
        memcpy(buf + 6 + 8 * i, &perm, 2);
        memcpy(buf + 8 + 8 * i, &id, 4);
    }
    return setxattr(path, name, buf, 4 + 8 * count, 0);
}

static int cmd_acl(const char *dir) {
    if (chdir(dir)) return 1;
    umask(022);
    mkdir("inherit", 0755);
    // user::rwx user:1000:rwx group::r-x mask::rwx other::---
    const unsigned short def[][3] = {{1, 7, 0xffff}, {2, 7, 1000}, {4, 5, 0xffff}, {0x10, 7, 0xffff}, {0x20, 0, 0xffff}};
    SHOW("set a default ACL", set_acl("inherit", "system.posix_acl_default", def, 5));
    close(open("inherit/file", O_CREAT | O_WRONLY, 0666));
    mkdir("inherit/sub", 0777);
    struct stat st;
    stat("inherit/file", &st);
    printf("file created under the default ACL: %o (umask 022 not applied)\n", st.st_mode & 07777);
    stat("inherit/sub", &st);
    printf("directory created under it: %o, inherits the default ACL: %s\n", st.st_mode & 07777,
           getxattr("inherit/sub", "system.posix_acl_default", NULL, 0) > 0 ? "yes" : "no");
    close(open("plain", O_CREAT | O_WRONLY, 0666));
    stat("plain", &st);
    printf("file created without one: %o\n", st.st_mode & 07777);

    int fd = open("private", O_CREAT | O_WRONLY | O_TRUNC, 0600);
    write(fd, "acl", 3);
    close(fd);
    // user::rw- user:1000:r-- group::--- mask::r-- other::---
    const unsigned short acc[][3] = {{1, 6, 0xffff}, {2, 4, 1000}, {4, 0, 0xffff}, {0x10, 4, 0xffff}, {0x20, 0, 0xffff}};
    SHOW("set an access ACL", set_acl("private", "system.posix_acl_access", acc, 5));
    stat("private", &st);
    printf("mode with the access ACL: %o\n", st.st_mode & 07777);
    if (fork() == 0) {
        setgroups(0, NULL);
        setgid(1000);
        setuid(1000);
        SHOW("uid 1000 reads through the ACL", open("private", O_RDONLY));
        SHOW("uid 1000 writes", open("private", O_WRONLY));
        _exit(0);
    }
    wait(NULL);
    if (fork() == 0) {
        setgroups(0, NULL);
        setgid(1001);
        setuid(1001);
        SHOW("uid 1001 reads", open("private", O_RDONLY));
        _exit(0);
    }
    wait(NULL);
    return 0;
}

// Renames across a mount point (EXDEV) and compares devices.
static int cmd_xdev(const char *from, const char *to) {
    close(open(from, O_CREAT | O_WRONLY, 0644));
    SHOW("rename across mounts", rename(from, to));
    SHOW("link across mounts", link(from, to));
    struct stat a, b;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", to);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    stat(from, &a);
    stat(dir, &b);
    printf("the submount has its own st_dev: %s\n", a.st_dev != b.st_dev ? "yes" : "no");
    return 0;
}

// Random 4 KiB reads for the cache benchmark: posixcheck randread FILE COUNT SEED (prints nothing).
static int cmd_randread(const char *file, long count, unsigned long seed) {
    int fd = open(file, O_RDONLY);
    if (fd < 0) { perror("randread"); return 1; }
    struct stat st;
    fstat(fd, &st);
    long blocks = st.st_size / 4096;
    if (blocks < 1) return 1;
    char buf[4096];
    unsigned long x = seed | 1;
    for (long i = 0; i < count; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        if (pread(fd, buf, sizeof buf, (off_t)(x % blocks) * 4096) < 0) { perror("pread"); return 1; }
    }
    close(fd);
    return 0;
}

// Runs a command as another user: posixcheck asuser UID GID[,SUPPLEMENTARY] command...
static int cmd_asuser(int argc, char **argv) {
    uid_t uid = atoi(argv[2]);
    gid_t gid = atoi(argv[3]);
    const char *comma = strchr(argv[3], ',');
    gid_t supplementary = comma ? (gid_t)atoi(comma + 1) : 0;
    if (setgroups(comma ? 1 : 0, &supplementary) || setgid(gid) || setuid(uid)) { perror("asuser"); return 1; }
    execvp(argv[4], argv + 4);
    perror("exec");
    return 127;
}

// btime DIR: a new file's birth time (statx), which a local file system reports and keeps when the
// modification time is set back.
static int cmd_btime(const char *dir) {
    if (chdir(dir)) return 1;
    int fd = open("b-file", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0) { printf("create: %s\n", name(errno)); return 0; }
    struct statx sx, again;
    SHOW("statx", statx(AT_FDCWD, "b-file", 0, STATX_BASIC_STATS | STATX_BTIME, &sx));
    int has = (sx.stx_mask & STATX_BTIME) != 0;
    printf("birth time reported: %s\n", has ? "yes" : "no");
    if (!has) { close(fd); return 0; }
    printf("birth time is the new file's mtime: %s\n",
           sx.stx_btime.tv_sec == sx.stx_mtime.tv_sec && sx.stx_btime.tv_nsec == sx.stx_mtime.tv_nsec ? "yes" : "no");
    struct timespec old[2] = { { 1000000000, 0 }, { 1000000000, 0 } };
    SHOW("utimensat", utimensat(AT_FDCWD, "b-file", old, 0));
    SHOW("statx of the open file", statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS | STATX_BTIME, &again));
    printf("birth time kept, mtime set back: %s\n",
           (again.stx_mask & STATX_BTIME) && again.stx_btime.tv_sec == sx.stx_btime.tv_sec &&
           again.stx_btime.tv_nsec == sx.stx_btime.tv_nsec && again.stx_mtime.tv_sec == 1000000000 ? "yes" : "no");
    close(fd);
    return 0;
}

// create PATH MODE (octal): open(O_CREAT | O_EXCL) with that mode; prints the result.
static int cmd_create(const char *path, const char *mode) {
    int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, (mode_t)strtol(mode, NULL, 8));
    printf("create %s: %s\n", path, fd < 0 ? name(errno) : "OK");
    if (fd >= 0) close(fd);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 3 && !strcmp(argv[1], "errors")) return cmd_errors(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "rename2")) return cmd_rename2(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "unlinked")) return cmd_unlinked(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "sparse")) return cmd_sparse(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "written")) return cmd_written(argv[2]);
    if (argc >= 4 && !strcmp(argv[1], "append")) return cmd_append(argv[2], atoi(argv[3]));
    if (argc >= 3 && !strcmp(argv[1], "mmap")) return cmd_mmap(argv[2], argc >= 4 && !strcmp(argv[3], "fault"));
    if (argc >= 3 && !strcmp(argv[1], "tmpfile")) return cmd_tmpfile(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "times")) return cmd_times(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "btime")) return cmd_btime(argv[2]);
    if (argc >= 4 && !strcmp(argv[1], "create")) return cmd_create(argv[2], argv[3]);
    if (argc >= 3 && !strcmp(argv[1], "locks")) return cmd_locks(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "probe")) return cmd_probe(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "hold")) return cmd_hold(argv[2]);
    if (argc >= 5 && !strcmp(argv[1], "asuser")) return cmd_asuser(argc, argv);
    if (argc >= 3 && !strcmp(argv[1], "xattr")) return cmd_xattr(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "acl")) return cmd_acl(argv[2]);
    if (argc >= 5 && !strcmp(argv[1], "randread")) return cmd_randread(argv[2], atol(argv[3]), strtoul(argv[4], NULL, 10));
    if (argc >= 4 && !strcmp(argv[1], "xdev")) return cmd_xdev(argv[2], argv[3]);
    fprintf(stderr, "usage: posixcheck errors|rename2|unlinked|sparse|append N|mmap|tmpfile|times|locks|probe|hold|xattr DIR-or-FILE\n"
                    "       posixcheck xdev FILE FILE-ON-ANOTHER-MOUNT\n"
                    "       posixcheck asuser UID GID command...\n");
    return 2;
}
