// SPDX-License-Identifier: Apache-2.0
//
// difftest: a seeded random sequence of file-system operations, done on two trees at once (the share and a
// local reference, both in the same guest), comparing every result, errno and the state of both trees after
// each step. At the first divergence it prints the seed, the step and the last operations, and exits 1.
//
// Usage: difftest [-s SEED] [-n OPS] [-x] [-M] [-G] [-F] [-R] [-v] TREE_A TREE_B
//   TREE_A and TREE_B are empty directories at the same depth (symlinks resolve alike). Runs as root.
//   -x: also extended attributes (user.*); -M: no mappings (a FUSE file opened with DIRECT_IO cannot be mapped
//   shared by a 6.1 guest); -G: no set-group-id bit left by a write (see compare_state; for --killpriv-v2);
//   -F: no flock (where flock and POSIX locks are one lock space, as on GlusterFS); -R: renames without flags
//   (where renameat2's flags are EINVAL, as on GlusterFS);
//   -v: how often each call ran and succeeded. Exit status 0: no divergence; 1: a divergence; 2: set-up error.
//
// Compared after every step, for each name of a fixed pool: whether it exists (lstat's errno), its type,
// permission bits, owner, link count and size (regular files and symlinks), a regular file's contents, a
// symlink's target, a directory's sorted listing, the user.* attributes and their values, and whether a file
// still has the modification time the test last set on it (times the kernel sets come from each side's clock,
// so only "changed since the test set it" compares). Each call's result and errno, what reads return, lseek's
// offsets and what F_GETLK reports are compared as they happen. Not compared: inode and device numbers,
// st_blocks, a directory's size, ctime, and access times except right after the test sets them.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/fsuid.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#define RENAME_EXCHANGE (1 << 1)
#define RENAME_WHITEOUT (1 << 2)
#endif
#ifndef F_OFD_GETLK
#define F_OFD_GETLK 36
#define F_OFD_SETLK 37
#endif
#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif
#ifndef SEEK_DATA
#define SEEK_DATA 3
#define SEEK_HOLE 4
#endif

enum { SIDES = 2, SLOTS = 8, HISTORY = 32, LINE = 400, MAX_OFFSET = 96 * 1024, MAX_LENGTH = 12 * 1024 };

static const char *roots[SIDES];
static int rootfd[SIDES];
static uint64_t seed, state;
static long step;
static bool with_xattr, without_mmap, strict_setgid, without_flock, without_rename_flags;
// The file-system user of the current step: 0, or 1000 for a step done as an ordinary user (setfsuid and
// setfsgid, which also drop root's file capabilities), on both sides alike.
static int acting_user;

// The names operations draw from: few, so that operations keep meeting each other's files.
static const char *const pool[] = {
    "a", "b", "c", "d", "e", "d0", "d1", "d0/a", "d0/b", "d0/d2", "d0/d2/a", "d1/a", "d1/b", "l0", "l1", "p",
};
enum { POOL = sizeof pool / sizeof pool[0] };
static const char *const directories[] = { ".", "d0", "d1", "d0/d2" };
static const char *const targets[] = { "a", "b", "d0", "d0/a", "d1/b", "missing", "l0", "../a" };

// An open file, the same on both sides.
struct slot {
    bool used;
    int fd[SIDES];
    int flags;
    char what[48];
};
static struct slot slots[SLOTS];

// The modification time (ns) the test last gave each name of the pool, while both sides still have it.
static int64_t explicit_mtime[POOL];
static void forget_explicit_times(void) { memset(explicit_mtime, 0, sizeof explicit_mtime); }

static char history[HISTORY][LINE];
static unsigned char data[MAX_LENGTH];
static unsigned char buffers[SIDES][MAX_LENGTH];

static uint64_t next(void) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);  // splitmix64
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static uint64_t below(uint64_t n) { return n ? next() % n : 0; }
static bool chance(int percent) { return below(100) < (uint64_t)percent; }
static const char *pick(const char *const *list, size_t n) { return list[below(n)]; }
#define PICK(list) pick(list, sizeof list / sizeof list[0])

static void record(const char *format, ...) {
    char *line = history[step % HISTORY];
    int n = snprintf(line, LINE, acting_user ? "%ld: [uid %d] " : "%ld: ", step, acting_user);
    va_list ap;
    va_start(ap, format);
    vsnprintf(line + n, LINE - n, format, ap);
    va_end(ap);
}

static void append(const char *format, ...) {
    char *line = history[step % HISTORY];
    size_t n = strlen(line);
    va_list ap;
    va_start(ap, format);
    vsnprintf(line + n, LINE - n, format, ap);
    va_end(ap);
}

static void diverged(const char *format, ...) {
    printf("DIVERGENCE seed=%" PRIu64 " step=%ld: ", seed, step);
    va_list ap;
    va_start(ap, format);
    vprintf(format, ap);
    va_end(ap);
    printf("\nlast operations (side 0 is %s, side 1 is %s):\n", roots[0], roots[1]);
    long first = step >= HISTORY - 1 ? step - HISTORY + 1 : 0;
    for (long i = first; i <= step; i++) printf("  %s\n", history[i % HISTORY]);
    fflush(stdout);
    exit(1);
}

static const char *describe(int error) { return error ? strerror(error) : "ok"; }

// The result of one call on each side: its value, and errno when it failed (value -1).
struct result { long value; int error; };
#define ON_BOTH(r, expr) do { for (int i = 0; i < SIDES; i++) { errno = 0; long v_ = (long)(expr); \
    r[i] = (struct result){ v_, v_ == -1 ? errno : 0 }; } } while (0)

// Compares the outcome: the same errno, and the same value unless `values` is false (descriptors, addresses).
// How often each kind of call ran and succeeded, for the summary (-v).
static struct { const char *what; long calls, succeeded; } tally[48];

static void count(const char *what, bool succeeded) {
    for (int i = 0; i < 48; i++) {
        if (!tally[i].what) tally[i].what = what;
        if (tally[i].what == what || strcmp(tally[i].what, what) == 0) {
            tally[i].calls++;
            tally[i].succeeded += succeeded;
            return;
        }
    }
}

static bool same(const char *what, struct result r[SIDES], bool values) {
    append(" = %ld (%s)", r[0].value, describe(r[0].error));
    count(what, r[0].error == 0);
    if (r[0].error != r[1].error || (values && r[0].error == 0 && r[0].value != r[1].value)) {
        diverged("%s: %ld (%s) against %ld (%s)", what, r[0].value, describe(r[0].error), r[1].value,
                 describe(r[1].error));
    }
    return r[0].error == 0;
}

static int free_slot(void) {
    for (int s = 0; s < SLOTS; s++) if (!slots[s].used) return s;
    return -1;
}

static int used_slot(void) {
    int start = (int)below(SLOTS);
    for (int i = 0; i < SLOTS; i++) {
        int s = (start + i) % SLOTS;
        if (slots[s].used) return s;
    }
    return -1;
}

static void close_slot(int s) {
    for (int i = 0; i < SIDES; i++) close(slots[s].fd[i]);
    slots[s].used = false;
}

static void fill(size_t length) {
    for (size_t i = 0; i < length; i += 8) {
        uint64_t v = next();
        memcpy(data + i, &v, length - i < 8 ? length - i : 8);
    }
}

static uint64_t random_offset(void) {
    switch (below(4)) {
    case 0: return below(4096);
    case 1: return below(MAX_OFFSET / 4096) * 4096;
    default: return below(MAX_OFFSET);
    }
}

static size_t random_length(void) { return chance(20) ? 4096 * (1 + below(2)) : 1 + below(MAX_LENGTH - 1); }

// Whether a name is something this test must never open on either side (a FIFO would block).
static bool special(const char *path) {
    struct stat st;
    for (int i = 0; i < SIDES; i++) {
        if (fstatat(rootfd[i], path, &st, 0) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) return true;
    }
    return false;
}

// --- operations -------------------------------------------------------------------------------------------

static void op_open(void) {
    int s = free_slot();
    if (s < 0) {
        s = used_slot();
        close_slot(s);
    }
    const char *path = PICK(pool);
    static const int modes[] = { O_RDONLY, O_WRONLY, O_RDWR };
    int flags = modes[below(3)] | O_CLOEXEC;
    if (chance(40)) flags |= O_CREAT;
    if (chance(10)) flags |= O_EXCL;
    if (chance(15)) flags |= O_TRUNC;
    if (chance(20)) flags |= O_APPEND;
    if (chance(5)) flags |= O_NOFOLLOW;
    if (chance(5)) flags |= O_DIRECTORY;
    if (chance(5)) flags |= O_SYNC;
    if (chance(5)) flags |= O_DSYNC;
    if (chance(5)) flags |= O_NOATIME;
    mode_t mode = (mode_t)below(01000) | (chance(10) ? 06000 : 0);
    bool tmpfile = chance(6);
    if (tmpfile) {
        path = PICK(directories);
        flags = (chance(50) ? O_RDWR : O_WRONLY) | O_TMPFILE | O_CLOEXEC | (chance(30) ? O_EXCL : 0);
    }
    record("open %s flags=%#o mode=%#o", path, flags, mode);
    if (special(path)) { append(": a special file, skipped"); return; }
    struct result r[SIDES];
    ON_BOTH(r, openat(rootfd[i], path, flags, mode));
    if (r[0].error != r[1].error) {
        for (int i = 0; i < SIDES; i++) if (r[i].error == 0) close((int)r[i].value);
    }
    if (!same("open", r, false)) return;
    slots[s] = (struct slot){ .used = true, .fd = { (int)r[0].value, (int)r[1].value }, .flags = flags };
    snprintf(slots[s].what, sizeof slots[s].what, "%s%s", tmpfile ? "tmpfile in " : "", path);
    append(" -> slot %d", s);
}

static void op_close(void) {
    int s = used_slot();
    if (s < 0) return;
    record("close slot %d (%s)", s, slots[s].what);
    close_slot(s);
}

static void op_read(void) {
    int s = used_slot();
    if (s < 0) return;
    size_t length = random_length();
    bool positioned = chance(50);
    uint64_t offset = random_offset();
    record("%s slot %d (%s) length %zu offset %" PRIu64, positioned ? "pread" : "read", s, slots[s].what, length,
           positioned ? offset : 0);
    struct result r[SIDES];
    if (positioned) {
        ON_BOTH(r, pread(slots[s].fd[i], buffers[i], length, (off_t)offset));
    } else {
        ON_BOTH(r, read(slots[s].fd[i], buffers[i], length));
    }
    if (same("read", r, true) && memcmp(buffers[0], buffers[1], (size_t)r[0].value) != 0) {
        diverged("read: the bytes differ");
    }
}

static void op_write(void) {
    int s = used_slot();
    if (s < 0) return;
    size_t length = random_length();
    bool positioned = chance(50);
    uint64_t offset = random_offset();
    fill(length);
    record("%s slot %d (%s) length %zu offset %" PRIu64, positioned ? "pwrite" : "write", s, slots[s].what, length,
           positioned ? offset : 0);
    struct result r[SIDES];
    if (positioned) {
        ON_BOTH(r, pwrite(slots[s].fd[i], data, length, (off_t)offset));
    } else {
        ON_BOTH(r, write(slots[s].fd[i], data, length));
    }
    same("write", r, true);
}

static void op_lseek(void) {
    int s = used_slot();
    if (s < 0) return;
    static const int whences[] = { SEEK_SET, SEEK_CUR, SEEK_END, SEEK_DATA, SEEK_HOLE };
    int whence = whences[below(5)];
    int64_t offset = chance(10) ? -(int64_t)below(5000) - 1 : (int64_t)random_offset();
    record("lseek slot %d (%s) %" PRId64 " whence %d", s, slots[s].what, offset, whence);
    struct stat st;
    if (fstat(slots[s].fd[0], &st) != 0 || !S_ISREG(st.st_mode)) {
        // A directory's offsets are its file system's own cookies.
        append(": not a regular file, skipped");
        return;
    }
    struct result r[SIDES];
    ON_BOTH(r, lseek(slots[s].fd[i], offset, whence));
    if (whence != SEEK_DATA && whence != SEEK_HOLE) {
        same("lseek", r, true);
        return;
    }
    // Where data and holes are is the file system's choice (ext4 counts unwritten extents as holes, tmpfs
    // its allocated pages as data; any file may report a hole as data): errors are compared, offsets checked
    // for what every file system must give (from the offset to the size), and both positions set alike after.
    if (offset < 0 || offset >= st.st_size) {
        same("lseek", r, true);  // ENXIO everywhere
        return;
    }
    for (int i = 0; i < SIDES; i++) {
        // SEEK_DATA may find no data up to the size (ENXIO); SEEK_HOLE always finds the one at the end.
        bool valid = r[i].error == 0 ? r[i].value >= offset && r[i].value <= st.st_size
                                           && (whence == SEEK_HOLE || r[i].value < st.st_size)
                                     : whence == SEEK_DATA && r[i].error == ENXIO;
        if (!valid) diverged("lseek on side %d: %ld (%s) for %s from %" PRId64 " in %lld bytes", i, r[i].value,
                             describe(r[i].error), whence == SEEK_DATA ? "SEEK_DATA" : "SEEK_HOLE", offset,
                             (long long)st.st_size);
    }
    lseek(slots[s].fd[1], lseek(slots[s].fd[0], 0, SEEK_CUR), SEEK_SET);
}

static void op_truncate(void) {
    uint64_t length = chance(20) ? 0 : random_offset();
    struct result r[SIDES];
    struct stat before;
    bool unchanged;
    int s = chance(50) ? used_slot() : -1;
    if (s >= 0) {
        record("ftruncate slot %d (%s) to %" PRIu64, s, slots[s].what, length);
        unchanged = fstat(slots[s].fd[0], &before) == 0 && (uint64_t)before.st_size == length;
        ON_BOTH(r, ftruncate(slots[s].fd[i], (off_t)length));
    } else {
        const char *path = PICK(pool);
        record("truncate %s to %" PRIu64, path, length);
        if (special(path)) { append(": a special file, skipped"); return; }
        unchanged = fstatat(rootfd[0], path, &before, 0) == 0 && (uint64_t)before.st_size == length;
        ON_BOTH(r, ({ char p[256]; snprintf(p, sizeof p, "%s/%s", roots[i], path); truncate(p, (off_t)length); }));
    }
    // POSIX updates the times only "if the file size is changed": ext4 does anyway, tmpfs does not.
    if (unchanged) forget_explicit_times();
    same("truncate", r, true);
}

static void op_fallocate(void) {
    int s = used_slot();
    if (s < 0) return;
    static const int modes[] = { 0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE };
    int mode = modes[below(3)];
    uint64_t offset = random_offset(), length = 1 + below(3 * 4096);
    record("fallocate slot %d (%s) mode %d offset %" PRIu64 " length %" PRIu64, s, slots[s].what, mode, offset, length);
    struct result r[SIDES];
    ON_BOTH(r, fallocate(slots[s].fd[i], mode, (off_t)offset, (off_t)length));
    same("fallocate", r, true);
}

static void op_sync(void) {
    int s = used_slot();
    if (s < 0) return;
    bool data_only = chance(50);
    record("%s slot %d (%s)", data_only ? "fdatasync" : "fsync", s, slots[s].what);
    struct result r[SIDES];
    ON_BOTH(r, data_only ? fdatasync(slots[s].fd[i]) : fsync(slots[s].fd[i]));
    same("fsync", r, true);
}

// Writes (or reads) through a shared mapping of an open file, then msync and munmap.
static void op_mmap(void) {
    int s = used_slot();
    if (s < 0) return;
    struct stat st[SIDES];
    for (int i = 0; i < SIDES; i++) {
        if (fstat(slots[s].fd[i], &st[i]) != 0) return;
    }
    if (!S_ISREG(st[0].st_mode)) return;
    if (st[0].st_size != st[1].st_size) diverged("fstat of slot %d: size %lld against %lld", s,
                                                 (long long)st[0].st_size, (long long)st[1].st_size);
    if (st[0].st_size == 0) return;
    bool writing = chance(70);
    size_t size = (size_t)st[0].st_size;
    size_t offset = (size_t)below(size);
    size_t length = 1 + (size_t)below(size - offset < MAX_LENGTH ? size - offset : MAX_LENGTH);
    fill(length);
    record("mmap %s slot %d (%s) offset %zu length %zu", writing ? "write" : "read", s, slots[s].what, offset, length);
    struct result r[SIDES];
    void *maps[SIDES];
    int prot = PROT_READ | (writing ? PROT_WRITE : 0);
    ON_BOTH(r, (maps[i] = mmap(NULL, size, prot, MAP_SHARED, slots[s].fd[i], 0)) == MAP_FAILED ? -1 : 0);
    if (r[0].error != r[1].error) {
        for (int i = 0; i < SIDES; i++) if (r[i].error == 0) munmap(maps[i], size);
    }
    if (!same("mmap", r, true)) return;
    for (int i = 0; i < SIDES; i++) {
        if (writing) {
            memcpy((char *)maps[i] + offset, data, length);
        } else {
            memcpy(buffers[i], (char *)maps[i] + offset, length);
        }
    }
    if (!writing && memcmp(buffers[0], buffers[1], length) != 0) diverged("mmap read: the bytes differ");
    ON_BOTH(r, msync(maps[i], size, MS_SYNC));
    same("msync", r, true);
    for (int i = 0; i < SIDES; i++) munmap(maps[i], size);
}

static void op_rename(void) {
    const char *from = PICK(pool), *to = PICK(pool);
    static const unsigned flag_choices[] = { 0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT };
    unsigned flags = flag_choices[below(6)];
    if (without_rename_flags) flags = 0;
    record("rename %s %s flags %u", from, to, flags);
    struct result r[SIDES];
    ON_BOTH(r, syscall(SYS_renameat2, rootfd[i], from, rootfd[i], to, flags));
    // ext4 changes the source directory's times even when a RENAME_WHITEOUT fails; tmpfs does not.
    if (flags == RENAME_WHITEOUT && r[0].error) forget_explicit_times();
    same("rename", r, true);
}

static void op_link(void) {
    const char *from = PICK(pool), *to = PICK(pool);
    int flags = chance(30) ? AT_SYMLINK_FOLLOW : 0;
    record("link %s %s flags %#x", from, to, flags);
    struct result r[SIDES];
    ON_BOTH(r, linkat(rootfd[i], from, rootfd[i], to, flags));
    same("link", r, true);
}

// Links an O_TMPFILE (or any open file) into the tree.
static void op_link_open(void) {
    int s = used_slot();
    if (s < 0) return;
    const char *to = PICK(pool);
    record("link slot %d (%s) as %s", s, slots[s].what, to);
    struct result r[SIDES];
    ON_BOTH(r, linkat(slots[s].fd[i], "", rootfd[i], to, AT_EMPTY_PATH));
    same("link open file", r, true);
}

static void op_symlink(void) {
    const char *target = PICK(targets), *path = PICK(pool);
    record("symlink %s -> %s", path, target);
    struct result r[SIDES];
    ON_BOTH(r, symlinkat(target, rootfd[i], path));
    same("symlink", r, true);
}

static void op_unlink(void) {
    const char *path = PICK(pool);
    bool directory = chance(25);
    record("%s %s", directory ? "rmdir" : "unlink", path);
    struct result r[SIDES];
    ON_BOTH(r, unlinkat(rootfd[i], path, directory ? AT_REMOVEDIR : 0));
    same("unlink", r, true);
}

static void op_mkdir(void) {
    const char *path = chance(60) ? PICK(directories) : PICK(pool);
    mode_t mode = (mode_t)below(01000) | 0700;
    record("mkdir %s %#o", path, mode);
    struct result r[SIDES];
    ON_BOTH(r, mkdirat(rootfd[i], path, mode));
    same("mkdir", r, true);
}

static void op_mknod(void) {
    const char *path = PICK(pool);
    record("mkfifo %s", path);
    struct result r[SIDES];
    ON_BOTH(r, mkfifoat(rootfd[i], path, 0644));
    same("mkfifo", r, true);
}

static void op_chmod(void) {
    const char *path = PICK(pool);
    mode_t mode = (mode_t)below(010000);
    struct result r[SIDES];
    int s = chance(30) ? used_slot() : -1;
    if (s >= 0) {
        record("fchmod slot %d (%s) %#o", s, slots[s].what, mode);
        ON_BOTH(r, fchmod(slots[s].fd[i], mode));
    } else {
        record("chmod %s %#o", path, mode);
        ON_BOTH(r, fchmodat(rootfd[i], path, mode, 0));
    }
    same("chmod", r, true);
}

static void op_chown(void) {
    static const int ids[] = { -1, 0, 1000, 65534 };
    const char *path = PICK(pool);
    int uid = ids[below(4)], gid = ids[below(4)];
    int flags = chance(50) ? AT_SYMLINK_NOFOLLOW : 0;
    record("chown %s %d:%d flags %#x", path, uid, gid, flags);
    struct result r[SIDES];
    ON_BOTH(r, fchownat(rootfd[i], path, (uid_t)uid, (gid_t)gid, flags));
    same("chown", r, true);
}

static int pool_index(const char *path) {
    for (int i = 0; i < POOL; i++) if (strcmp(pool[i], path) == 0) return i;
    return -1;
}

static void op_utimens(void) {
    const char *path = PICK(pool);
    struct timespec times[2];
    for (int t = 0; t < 2; t++) {
        switch (below(6)) {
        case 0: times[t] = (struct timespec){ 0, UTIME_NOW }; break;
        case 1: times[t] = (struct timespec){ 0, UTIME_OMIT }; break;
        default: times[t] = (struct timespec){ 1000000000 + (time_t)below(700000000), (long)below(1000000000) };
        }
    }
    int flags = chance(30) ? AT_SYMLINK_NOFOLLOW : 0;
    record("utimensat %s atime %lld.%09ld mtime %lld.%09ld flags %#x", path, (long long)times[0].tv_sec, times[0].tv_nsec,
           (long long)times[1].tv_sec, times[1].tv_nsec, flags);
    struct result r[SIDES];
    ON_BOTH(r, utimensat(rootfd[i], path, times, flags));
    if (!same("utimensat", r, true)) return;
    struct stat st[SIDES];
    for (int i = 0; i < SIDES; i++) fstatat(rootfd[i], path, &st[i], flags & AT_SYMLINK_NOFOLLOW);
    for (int t = 0; t < 2; t++) {
        if (times[t].tv_nsec == UTIME_NOW || times[t].tv_nsec == UTIME_OMIT) continue;
        struct timespec got[SIDES] = { t ? st[0].st_mtim : st[0].st_atim, t ? st[1].st_mtim : st[1].st_atim };
        for (int i = 0; i < SIDES; i++) {
            if (got[i].tv_sec != times[t].tv_sec || got[i].tv_nsec != times[t].tv_nsec) {
                diverged("utimensat: side %d has %s %lld.%09ld", i, t ? "mtime" : "atime", (long long)got[i].tv_sec,
                         got[i].tv_nsec);
            }
        }
    }
    int index = pool_index(path);
    if (index >= 0 && !(flags & AT_SYMLINK_NOFOLLOW) && times[1].tv_nsec != UTIME_NOW && times[1].tv_nsec != UTIME_OMIT) {
        // Through a symlink the time lands on its target, another name: keep the mark for names set directly.
        struct stat link;
        if (fstatat(rootfd[0], path, &link, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISLNK(link.st_mode)) {
            explicit_mtime[index] = (int64_t)times[1].tv_sec * 1000000000 + times[1].tv_nsec;
        }
    }
}

static void op_xattr(void) {
    static const char *const names[] = { "user.a", "user.b", "user.long.name.c" };
    const char *path = PICK(pool), *attribute = PICK(names);
    struct result r[SIDES];
    switch (below(4)) {
    case 0: {
        static const int flag_choices[] = { 0, XATTR_CREATE, XATTR_REPLACE };
        int flags = flag_choices[below(3)];
        size_t length = below(200);
        fill(length);
        record("setxattr %s %s length %zu flags %d", path, attribute, length, flags);
        ON_BOTH(r, ({ char p[256]; snprintf(p, sizeof p, "%s/%s", roots[i], path);
                      lsetxattr(p, attribute, data, length, flags); }));
        same("setxattr", r, true);
        break;
    }
    case 1: {
        size_t size = chance(20) ? 0 : chance(20) ? 3 : 256;
        record("getxattr %s %s size %zu", path, attribute, size);
        ON_BOTH(r, ({ char p[256]; snprintf(p, sizeof p, "%s/%s", roots[i], path);
                      lgetxattr(p, attribute, buffers[i], size); }));
        if (same("getxattr", r, true) && size && memcmp(buffers[0], buffers[1], (size_t)r[0].value) != 0) {
            diverged("getxattr: the values differ");
        }
        break;
    }
    case 2:
        record("removexattr %s %s", path, attribute);
        ON_BOTH(r, ({ char p[256]; snprintf(p, sizeof p, "%s/%s", roots[i], path); lremovexattr(p, attribute); }));
        same("removexattr", r, true);
        break;
    default: {
        size_t size = chance(20) ? 0 : chance(20) ? 5 : 512;
        record("listxattr %s size %zu", path, size);
        ON_BOTH(r, ({ char p[256]; snprintf(p, sizeof p, "%s/%s", roots[i], path);
                      llistxattr(p, (char *)buffers[i], size); }));
        same("listxattr", r, true);  // the names are compared, in order-free form, with the state
        break;
    }
    }
}

static const char *lock_type(int type) { return type == F_RDLCK ? "RD" : type == F_WRLCK ? "WR" : type == F_UNLCK ? "UN" : "?"; }

static void op_lock(void) {
    int s = used_slot();
    if (s < 0) return;
    struct result r[SIDES];
    if (chance(30)) {
        if (without_flock) return;
        static const int operations[] = { LOCK_SH, LOCK_EX, LOCK_UN };
        int operation = operations[below(3)] | LOCK_NB;
        record("flock slot %d (%s) %d", s, slots[s].what, operation);
        ON_BOTH(r, flock(slots[s].fd[i], operation));
        same("flock", r, true);
        return;
    }
    static const int commands[] = { F_SETLK, F_GETLK, F_OFD_SETLK, F_OFD_GETLK };
    static const char *const command_names[] = { "F_SETLK", "F_GETLK", "F_OFD_SETLK", "F_OFD_GETLK" };
    static const int types[] = { F_RDLCK, F_WRLCK, F_UNLCK };
    int c = (int)below(4);
    struct flock lock = { .l_type = (short)types[below(3)], .l_whence = SEEK_SET, .l_start = (off_t)below(100),
                          .l_len = (off_t)below(60) };
    record("%s slot %d (%s) %s %lld+%lld", command_names[c], s, slots[s].what, lock_type(lock.l_type),
           (long long)lock.l_start, (long long)lock.l_len);
    struct flock got[SIDES] = { lock, lock };
    ON_BOTH(r, fcntl(slots[s].fd[i], commands[c], &got[i]));
    if (!same("lock", r, true) || (commands[c] != F_GETLK && commands[c] != F_OFD_GETLK)) return;
    append(" -> %s %lld+%lld pid %d", lock_type(got[0].l_type), (long long)got[0].l_start, (long long)got[0].l_len,
           got[0].l_pid);
    // The holder's pid is this process for a POSIX lock and -1 for an OFD lock on both sides. Known
    // divergences, both the guest kernel's: F_GETLK that finds an OFD lock on a FUSE file reports pid 0, not -1
    // (FUSE carries the holder as a pid of the guest's namespace, and the kernel turns one it cannot find into
    // 0); F_OFD_GETLK that finds a process's POSIX lock on a FUSE file reports -1, not the process (the kernel
    // describes the server's answer in the request's own lock, which carries FL_OFDLCK, and reports -1 for it).
    bool zero_for_ofd = commands[c] == F_GETLK && ((got[0].l_pid == 0 && got[1].l_pid == -1) || (got[0].l_pid == -1 && got[1].l_pid == 0));
    bool ofd_for_process = commands[c] == F_OFD_GETLK && ((got[0].l_pid == -1 && got[1].l_pid > 0) || (got[0].l_pid > 0 && got[1].l_pid == -1));
    bool pids = got[0].l_pid == got[1].l_pid || zero_for_ofd || ofd_for_process;
    if (got[0].l_type != got[1].l_type || (got[0].l_type != F_UNLCK && (got[0].l_start != got[1].l_start
        || got[0].l_len != got[1].l_len || !pids))) {
        diverged("%s: %s %lld+%lld pid %d against %s %lld+%lld pid %d", command_names[c], lock_type(got[0].l_type),
                 (long long)got[0].l_start, (long long)got[0].l_len, got[0].l_pid, lock_type(got[1].l_type),
                 (long long)got[1].l_start, (long long)got[1].l_len, got[1].l_pid);
    }
}

// Another process and the locks of this one: a child opens the same file on each side and asks F_GETLK
// (which reports this process's pid for a POSIX lock of ours) and F_SETLK (which a lock of ours blocks), then
// ends, and its locks with it. The child writes what it saw to a pipe.
static void op_child_lock(void) {
    int s = used_slot();
    if (s < 0 || slots[s].what[0] == '(') return;  // an O_TMPFILE slot has no name to open
    static const int types[] = { F_RDLCK, F_WRLCK };
    struct flock lock = { .l_type = (short)types[below(2)], .l_whence = SEEK_SET, .l_start = (off_t)below(100),
                          .l_len = (off_t)below(60) };
    record("child F_GETLK, F_SETLK on %s %s %lld+%lld", slots[s].what, lock_type(lock.l_type),
           (long long)lock.l_start, (long long)lock.l_len);
    struct seen { int open_error, get_error, set_error; struct flock got; } seen[SIDES];
    for (int i = 0; i < SIDES; i++) {
        int channel[2];
        if (pipe(channel) != 0) return;
        pid_t child = fork();
        if (child == 0) {
            struct seen mine = { 0, 0, 0, lock };
            int fd = openat(rootfd[i], slots[s].what, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
            if (fd < 0) {
                mine.open_error = errno;
            } else {
                if (fcntl(fd, F_GETLK, &mine.got) != 0) mine.get_error = errno;
                struct flock set = lock;
                if (fcntl(fd, F_SETLK, &set) != 0) mine.set_error = errno;
            }
            (void)!write(channel[1], &mine, sizeof mine);
            _exit(0);
        }
        close(channel[1]);
        if (child < 0 || read(channel[0], &seen[i], sizeof seen[i]) != sizeof seen[i]) {
            close(channel[0]);
            if (child > 0) waitpid(child, NULL, 0);
            diverged("child lock: the child on side %d reported nothing", i);
        }
        close(channel[0]);
        waitpid(child, NULL, 0);
    }
    append(" -> open %s, F_GETLK %s %s %lld+%lld pid %d, F_SETLK %s", describe(seen[0].open_error),
           describe(seen[0].get_error), lock_type(seen[0].got.l_type), (long long)seen[0].got.l_start,
           (long long)seen[0].got.l_len, seen[0].got.l_pid, describe(seen[0].set_error));
    if (seen[0].open_error != seen[1].open_error || seen[0].get_error != seen[1].get_error
        || seen[0].set_error != seen[1].set_error) {
        diverged("child lock: open %s/%s, F_GETLK %s/%s, F_SETLK %s/%s", describe(seen[0].open_error),
                 describe(seen[1].open_error), describe(seen[0].get_error), describe(seen[1].get_error),
                 describe(seen[0].set_error), describe(seen[1].set_error));
    }
    if (seen[0].open_error || seen[0].get_error) return;
    struct flock *a = &seen[0].got, *b = &seen[1].got;
    // As in op_lock: an OFD holder is pid 0 through FUSE where it is -1 locally.
    bool pids = a->l_pid == b->l_pid || (a->l_pid == 0 && b->l_pid == -1) || (a->l_pid == -1 && b->l_pid == 0);
    if (a->l_type != b->l_type || (a->l_type != F_UNLCK && (a->l_start != b->l_start || a->l_len != b->l_len || !pids))) {
        diverged("child F_GETLK: %s %lld+%lld pid %d against %s %lld+%lld pid %d", lock_type(a->l_type),
                 (long long)a->l_start, (long long)a->l_len, a->l_pid, lock_type(b->l_type), (long long)b->l_start,
                 (long long)b->l_len, b->l_pid);
    }
}

// Whether the share's mode `a` is the local `b`. Known divergence (unless -G): a write by a user outside a
// file's group leaves its set-group-id bit when group execution is off. The guest kernel clears set-id bits for
// FUSE by its own older rule (only with group execution); with --killpriv-v2 the daemon clears them, by the
// current one.
static bool same_mode(mode_t a, mode_t b) {
    if (a == b) return true;
    return !strict_setgid && S_ISREG(a) && (a ^ b) == S_ISGID && (a & S_ISGID) && !(a & S_IXGRP);
}

static void op_fstat(void) {
    int s = used_slot();
    if (s < 0) return;
    record("fstat slot %d (%s)", s, slots[s].what);
    struct stat st[SIDES];
    struct result r[SIDES];
    ON_BOTH(r, fstat(slots[s].fd[i], &st[i]));
    if (!same("fstat", r, true)) return;
    if (!same_mode(st[0].st_mode, st[1].st_mode) || st[0].st_nlink != st[1].st_nlink
        || (S_ISREG(st[0].st_mode) && st[0].st_size != st[1].st_size)) {
        diverged("fstat: mode %o nlink %lu size %lld against mode %o nlink %lu size %lld", st[0].st_mode,
                 (unsigned long)st[0].st_nlink, (long long)st[0].st_size, st[1].st_mode, (unsigned long)st[1].st_nlink,
                 (long long)st[1].st_size);
    }
}

// --- listing a directory while it changes ------------------------------------------------------------------

struct names { int count; char name[64][64]; };

static void add_name(struct names *n, const char *name) {
    if (n->count < 64 && strlen(name) < 64) strcpy(n->name[n->count++], name);
}

static int occurrences(const struct names *n, const char *name) {
    int k = 0;
    for (int i = 0; i < n->count; i++) k += strcmp(n->name[i], name) == 0;
    return k;
}

static void list(int dirfd, const char *path, struct names *out) {
    out->count = 0;
    int fd = openat(dirfd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    DIR *dir = fdopendir(fd);
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) add_name(out, e->d_name);
    }
    closedir(dir);
}

// Reads part of a directory, changes it, reads the rest. POSIX: a name neither added nor removed meanwhile
// is returned exactly once; the changed one at most once. Checked on each side on its own.
static void op_readdir_changing(void) {
    const char *path = PICK(directories);
    static int counter;
    char changed[32];
    bool adding = chance(60);
    struct names before;
    list(rootfd[0], path, &before);
    if (adding || before.count == 0) {
        adding = true;
        snprintf(changed, sizeof changed, "x%d", counter++);
    } else {
        snprintf(changed, sizeof changed, "%s", before.name[below((uint64_t)before.count)]);
    }
    int first = (int)below(4);
    record("readdir %s, %s %s after %d entries", path, adding ? "create" : "remove", changed, first);
    for (int i = 0; i < SIDES; i++) {
        struct names stable, seen = { 0 };
        list(rootfd[i], path, &stable);
        int fd = openat(rootfd[i], path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) { if (i == 0) return; diverged("readdir: side %d cannot open %s (%s)", i, path, strerror(errno)); }
        DIR *dir = fdopendir(fd);
        struct dirent *e;
        int k = 0;
        while (k < first && (e = readdir(dir))) {
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) add_name(&seen, e->d_name);
            k++;
        }
        int at = dirfd(dir);
        int rc;
        if (adding) {
            rc = openat(at, changed, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
            if (rc >= 0) close(rc);
        } else {
            rc = unlinkat(at, changed, 0);
            if (rc != 0 && errno == EISDIR) rc = unlinkat(at, changed, AT_REMOVEDIR);
        }
        while ((e = readdir(dir))) {
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) add_name(&seen, e->d_name);
        }
        closedir(dir);
        for (int j = 0; j < stable.count; j++) {
            if (strcmp(stable.name[j], changed) == 0) continue;
            if (occurrences(&seen, stable.name[j]) != 1) {
                diverged("readdir on side %d: %s seen %d times", i, stable.name[j], occurrences(&seen, stable.name[j]));
            }
        }
        if (occurrences(&seen, changed) > 1) diverged("readdir on side %d: %s seen twice", i, changed);
        (void)rc;
    }
}

// --- the state of both trees ------------------------------------------------------------------------------

static int compare_names(const void *a, const void *b) { return strcmp(a, b); }

static void read_whole(int dirfd, const char *path, unsigned char *out, size_t capacity, ssize_t *length) {
    *length = -1;
    int fd = openat(dirfd, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return;
    size_t total = 0;
    ssize_t n;
    while (total < capacity && (n = read(fd, out + total, capacity - total)) > 0) total += (size_t)n;
    *length = (ssize_t)total;
    close(fd);
}

static unsigned char contents[SIDES][MAX_OFFSET + 2 * MAX_LENGTH + 8192];

static void compare_state(void) {
    for (int p = 0; p < POOL; p++) {
        const char *path = pool[p];
        struct stat st[SIDES];
        int error[SIDES];
        for (int i = 0; i < SIDES; i++) error[i] = fstatat(rootfd[i], path, &st[i], AT_SYMLINK_NOFOLLOW) ? errno : 0;
        if (error[0] != error[1]) diverged("%s: lstat %s against %s", path, describe(error[0]), describe(error[1]));
        if (error[0]) continue;
        if ((st[0].st_mode & S_IFMT) != (st[1].st_mode & S_IFMT)) diverged("%s: type %o against %o", path,
                                                                         st[0].st_mode & S_IFMT, st[1].st_mode & S_IFMT);
        bool link = S_ISLNK(st[0].st_mode);
        if (!link && !same_mode(st[0].st_mode, st[1].st_mode)) diverged("%s: mode %o against %o", path, st[0].st_mode, st[1].st_mode);
        if (st[0].st_uid != st[1].st_uid || st[0].st_gid != st[1].st_gid) {
            diverged("%s: owner %u:%u against %u:%u", path, st[0].st_uid, st[0].st_gid, st[1].st_uid, st[1].st_gid);
        }
        if (st[0].st_nlink != st[1].st_nlink) diverged("%s: %lu links against %lu", path, (unsigned long)st[0].st_nlink,
                                                       (unsigned long)st[1].st_nlink);
        if ((S_ISREG(st[0].st_mode) || link) && st[0].st_size != st[1].st_size) {
            diverged("%s: size %lld against %lld", path, (long long)st[0].st_size, (long long)st[1].st_size);
        }
        if (explicit_mtime[p]) {
            bool kept[SIDES];
            for (int i = 0; i < SIDES; i++) {
                kept[i] = (int64_t)st[i].st_mtim.tv_sec * 1000000000 + st[i].st_mtim.tv_nsec == explicit_mtime[p];
            }
            if (kept[0] != kept[1]) diverged("%s: the mtime the test set is %s on side 0 and %s on side 1", path,
                                             kept[0] ? "kept" : "changed", kept[1] ? "kept" : "changed");
            if (!kept[0]) explicit_mtime[p] = 0;
        }
        if (S_ISREG(st[0].st_mode)) {
            ssize_t n[SIDES];
            for (int i = 0; i < SIDES; i++) read_whole(rootfd[i], path, contents[i], sizeof contents[i], &n[i]);
            if (n[0] != n[1] || (n[0] > 0 && memcmp(contents[0], contents[1], (size_t)n[0]) != 0)) {
                size_t at = 0;
                while (n[0] > 0 && n[1] > 0 && at < (size_t)(n[0] < n[1] ? n[0] : n[1]) && contents[0][at] == contents[1][at]) at++;
                diverged("%s: contents differ (%zd and %zd bytes read, first difference at %zu)", path, n[0], n[1], at);
            }
        } else if (link) {
            char target[SIDES][256];
            ssize_t n[SIDES];
            for (int i = 0; i < SIDES; i++) n[i] = readlinkat(rootfd[i], path, target[i], sizeof target[i]);
            if (n[0] != n[1] || memcmp(target[0], target[1], n[0] > 0 ? (size_t)n[0] : 0) != 0) {
                diverged("%s: symlink targets differ", path);
            }
        } else if (S_ISDIR(st[0].st_mode)) {
            struct names listed[SIDES];
            for (int i = 0; i < SIDES; i++) {
                list(rootfd[i], path, &listed[i]);
                qsort(listed[i].name, (size_t)listed[i].count, sizeof listed[i].name[0], compare_names);
            }
            bool equal = listed[0].count == listed[1].count;
            for (int j = 0; equal && j < listed[0].count; j++) equal = strcmp(listed[0].name[j], listed[1].name[j]) == 0;
            if (!equal) diverged("%s: the listings differ (%d and %d names)", path, listed[0].count, listed[1].count);
        }
        if (with_xattr && !link) {
            char names[SIDES][1024];
            ssize_t n[SIDES];
            for (int i = 0; i < SIDES; i++) {
                char p[256];
                snprintf(p, sizeof p, "%s/%s", roots[i], path);
                n[i] = llistxattr(p, names[i], sizeof names[i]);
            }
            // the user.* names and their values, whatever the order
            for (int i = 0; i < SIDES; i++) {
                for (ssize_t at = 0; n[i] > 0 && at < n[i]; at += (ssize_t)strlen(names[i] + at) + 1) {
                    const char *attribute = names[i] + at;
                    if (strncmp(attribute, "user.", 5) != 0) continue;
                    char value[SIDES][256];
                    ssize_t v[SIDES];
                    for (int k = 0; k < SIDES; k++) {
                        char p[256];
                        snprintf(p, sizeof p, "%s/%s", roots[k], path);
                        v[k] = lgetxattr(p, attribute, value[k], sizeof value[k]);
                    }
                    if (v[0] != v[1] || (v[0] > 0 && memcmp(value[0], value[1], (size_t)v[0]) != 0)) {
                        diverged("%s: attribute %s differs (%zd and %zd bytes)", path, attribute, v[0], v[1]);
                    }
                }
            }
        }
    }
}

// --- main -------------------------------------------------------------------------------------------------

struct operation { void (*run)(void); int weight; bool xattr; };
static void op_mmap(void);
static const struct operation operations[] = {
    { op_open, 12, false }, { op_close, 5, false }, { op_read, 8, false }, { op_write, 8, false },
    { op_lseek, 4, false }, { op_truncate, 4, false }, { op_fallocate, 3, false }, { op_sync, 2, false },
    { op_mmap, 5, false }, { op_rename, 5, false }, { op_link, 3, false }, { op_link_open, 1, false },
    { op_symlink, 3, false }, { op_unlink, 5, false }, { op_mkdir, 4, false }, { op_mknod, 1, false },
    { op_chmod, 3, false }, { op_chown, 2, false }, { op_utimens, 4, false }, { op_xattr, 5, true },
    { op_lock, 6, false }, { op_fstat, 3, false }, { op_readdir_changing, 2, false }, { op_child_lock, 2, false },
};

int main(int argc, char **argv) {
    long count = 1000;
    bool verbose = false;
    seed = 1;
    int opt;
    while ((opt = getopt(argc, argv, "s:n:xMGFRv")) != -1) {
        switch (opt) {
        case 's': seed = strtoull(optarg, NULL, 0); break;
        case 'n': count = strtol(optarg, NULL, 0); break;
        case 'x': with_xattr = true; break;
        case 'v': verbose = true; break;
        case 'M': without_mmap = true; break;
        case 'G': strict_setgid = true; break;
        case 'F': without_flock = true; break;
        case 'R': without_rename_flags = true; break;
        default: fprintf(stderr, "usage: difftest [-s SEED] [-n OPS] [-x] [-M] [-G] [-v] TREE_A TREE_B\n"); return 2;
        }
    }
    if (argc - optind != 2) { fprintf(stderr, "usage: difftest [-s SEED] [-n OPS] [-x] [-M] [-G] [-v] TREE_A TREE_B\n"); return 2; }
    umask(022);
    for (int i = 0; i < SIDES; i++) {
        roots[i] = argv[optind + i];
        mkdir(roots[i], 0755);
        rootfd[i] = open(roots[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (rootfd[i] < 0) { perror(roots[i]); return 2; }
    }
    state = seed;
    int total = 0;
    for (size_t k = 0; k < sizeof operations / sizeof operations[0]; k++) {
        if ((!operations[k].xattr || with_xattr) && !(operations[k].run == op_mmap && without_mmap)) total += operations[k].weight;
    }
    for (step = 0; step < count; step++) {
        record("(nothing to do)");
        int choice = (int)below((uint64_t)total);
        for (size_t k = 0; k < sizeof operations / sizeof operations[0]; k++) {
            if ((operations[k].xattr && !with_xattr) || (operations[k].run == op_mmap && without_mmap)) continue;
            if (choice < operations[k].weight) {
                // One step in eight as an ordinary user: the same permission checks, owners and set-id rules
                // on both sides. The state is compared as root.
                acting_user = chance(12) ? 1000 : 0;
                if (acting_user) { setfsgid(1000); setfsuid(1000); }
                operations[k].run();
                if (acting_user) { setfsuid(0); setfsgid(0); acting_user = 0; }
                break;
            }
            choice -= operations[k].weight;
        }
        compare_state();
    }
    for (int s = 0; s < SLOTS; s++) if (slots[s].used) close_slot(s);
    printf("difftest: seed %" PRIu64 ", %ld operations, no divergence\n", seed, count);
    if (verbose) {
        for (int i = 0; i < 48 && tally[i].what; i++) printf("  %-16s %6ld calls, %6ld succeeded\n", tally[i].what, tally[i].calls, tally[i].succeeded);
    }
    return 0;
}
