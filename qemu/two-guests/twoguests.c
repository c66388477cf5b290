// SPDX-License-Identifier: Apache-2.0
//
// The guest side of qemu/two-guests/run: two guests, each with its own daemon, run this on one directory at
// once, as guest 0 and guest 1, and print what they did; the host checks the directory and the two outputs.
//
//   twoguests ID N DIR
//
// Phases, each started together (a barrier of POSIX locks, which the daemons hold on the host; a guest that never
// sees the other's lock goes on after 30 s and says so):
//   counter-fcntl  N times: F_SETLKW on DIR/counter.lock, read DIR/counter, write it back plus one, unlock
//   counter-flock  the same under flock(2) on DIR/counter2.lock, with DIR/counter2
//   excl           open(O_CREAT|O_EXCL) of DIR/excl/0 .. N-1 in turn, writing the winner's id into each it makes
//   append         N lines of 64 bytes to DIR/append.log, opened O_APPEND, one write(2) each
//   rename-read    guest 0 writes N versions of DIR/rr (a new file renamed over it each time); guest 1 reads it
//                  over and over meanwhile, now and then slowly through one open file, until it sees the last
//                  (or for 15 s)
//   close-to-open  guest 0 writes N versions of DIR/cto in place (O_TRUNC), each under F_SETLKW on DIR/cto.lock;
//                  guest 1 reads it under the same lock until it sees the last (or for 15 s)
// A version is self-checking: "version V length L\n" and then a pattern of V up to L bytes (lengths vary).
// Output: "##WIN K", "##SEEN PHASE VERSIONS FAILURES", "##FAIL PHASE what", "##NOBARRIER PHASE", "##DONE".
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int id, n;
static const char *dir;
static int barrier_fd = -1;

static void say(const char *format, ...) {
    char line[512];
    va_list ap;
    va_start(ap, format);
    int k = vsnprintf(line, sizeof line - 1, format, ap);
    va_end(ap);
    line[k++] = '\n';
    if (write(1, line, (size_t)k) < 0) exit(2);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static void path(char *out, const char *name) { snprintf(out, 512, "%s/%s", dir, name); }

static int posix_lock(int fd, short type, off_t start, off_t length, int command) {
    struct flock l = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = length };
    int r;
    while ((r = fcntl(fd, command, &l)) != 0 && errno == EINTR) {}
    return r;
}

// Both guests reach phase `phase` before either goes on: each locks a byte of its own and waits to see the
// other's (F_GETLK reports a lock another process holds: with the daemons' host locks, the other guest's).
static void barrier(int phase) {
    if (posix_lock(barrier_fd, F_WRLCK, phase * 2 + id, 1, F_SETLK) != 0) say("##FAIL barrier lock %d", errno);
    double give_up = now() + 30;
    for (;;) {
        struct flock l = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = phase * 2 + (1 - id), .l_len = 1 };
        if (fcntl(barrier_fd, F_GETLK, &l) == 0 && l.l_type != F_UNLCK) return;
        if (now() > give_up) {
            say("##NOBARRIER %d", phase);
            return;
        }
        usleep(5000);
    }
}

static int read_all(int fd, char *buffer, int size) {
    int total = 0;
    for (;;) {
        ssize_t k = read(fd, buffer + total, (size_t)(size - total));
        if (k < 0) return -1;
        if (k == 0) return total;
        total += (int)k;
        if (total == size) return total;
    }
}

static int read_counter(const char *file) {
    char buffer[64];
    int fd = open(file, O_RDONLY);
    if (fd < 0) return -1;
    int k = read_all(fd, buffer, sizeof buffer - 1);
    close(fd);
    if (k <= 0) return -1;
    buffer[k] = 0;
    return atoi(buffer);
}

static int write_text(const char *file, const char *text, int flags) {
    int fd = open(file, O_WRONLY | flags, 0644);
    if (fd < 0) return -1;
    size_t length = strlen(text);
    int ok = write(fd, text, length) == (ssize_t)length;
    return (close(fd) == 0 && ok) ? 0 : -1;
}

static void counter(int use_flock) {
    char lock_path[512], counter_path[512], text[32];
    path(lock_path, use_flock ? "counter2.lock" : "counter.lock");
    path(counter_path, use_flock ? "counter2" : "counter");
    int lock_fd = open(lock_path, O_RDWR);
    if (lock_fd < 0) { say("##FAIL counter open lock %d", errno); return; }
    for (int i = 0; i < n; i++) {
        int r = use_flock ? flock(lock_fd, LOCK_EX) : posix_lock(lock_fd, F_WRLCK, 0, 0, F_SETLKW);
        if (r != 0) { say("##FAIL counter lock %d", errno); break; }
        int value = read_counter(counter_path);
        if (value < 0) say("##FAIL counter read %d", errno);
        snprintf(text, sizeof text, "%d\n", value + 1);
        if (write_text(counter_path, text, O_TRUNC) != 0) say("##FAIL counter write %d", errno);
        if (use_flock) flock(lock_fd, LOCK_UN); else posix_lock(lock_fd, F_UNLCK, 0, 0, F_SETLK);
    }
    close(lock_fd);
}

static void excl(void) {
    char name[512], file[64];
    for (int k = 0; k < n; k++) {
        snprintf(file, sizeof file, "excl/%d", k);
        path(name, file);
        int fd = open(name, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd >= 0) {
            char text[8];
            int length = snprintf(text, sizeof text, "%d\n", id);
            if (write(fd, text, (size_t)length) != length) say("##FAIL excl write %d", errno);
            close(fd);
            say("##WIN %d", k);
        } else if (errno != EEXIST) {
            say("##FAIL excl %d errno %d", k, errno);
        }
    }
}

static void append(void) {
    char name[512], line[65];
    path(name, "append.log");
    int fd = open(name, O_WRONLY | O_APPEND);
    if (fd < 0) { say("##FAIL append open %d", errno); return; }
    for (int i = 0; i < n; i++) {
        int k = snprintf(line, sizeof line, "guest %d line %06d ", id, i);
        memset(line + k, 'a' + id, 63 - (size_t)k);
        line[63] = '\n';
        if (write(fd, line, 64) != 64) say("##FAIL append write %d", errno);
    }
    close(fd);
}

// A version: "version V length L\n" then bytes 'a' + (V + i) % 26 up to L bytes in all.
static int version_length(int v) { return 200 + (v * 7919) % 30000; }

static int make_version(char *buffer, int v) {
    int length = version_length(v);
    int k = snprintf(buffer, 64, "version %d length %d\n", v, length);
    for (int i = k; i < length; i++) buffer[i] = (char)('a' + (v + i) % 26);
    return length;
}

// The version a file's bytes hold, or -1 when they are not one whole version.
static int check_version(const char *buffer, int count) {
    int v, length, k;
    if (count < 20 || sscanf(buffer, "version %d length %d\n%n", &v, &length, &k) != 2 || length != count) return -1;
    for (int i = k; i < length; i++) if (buffer[i] != (char)('a' + (v + i) % 26)) return -1;
    return v;
}

static char big[65536];

// Reads the version a file holds; slowly (in two parts, with a pause between) when `slow`.
static int read_version(const char *file, int slow, int *error) {
    int fd = open(file, O_RDONLY);
    if (fd < 0) { *error = errno; return -1; }
    int total;
    if (slow) {
        ssize_t first = read(fd, big, 100);
        usleep(20000);
        int rest = first < 0 ? -1 : read_all(fd, big + first, (int)sizeof big - (int)first);
        total = rest < 0 ? -1 : (int)first + rest;
    } else {
        total = read_all(fd, big, sizeof big);
    }
    *error = total < 0 ? errno : 0;
    close(fd);
    return total < 0 ? -1 : check_version(big, total);
}

static void rename_read(void) {
    char target[512], temporary[512];
    path(target, "rr");
    path(temporary, "rr.tmp");
    if (id == 0) {
        for (int v = 1; v <= n; v++) {
            int length = make_version(big, v);
            int fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0 || write(fd, big, (size_t)length) != length || close(fd) != 0) say("##FAIL rename-read write %d", errno);
            if (rename(temporary, target) != 0) say("##FAIL rename-read rename %d", errno);
            usleep(2000);
        }
        return;
    }
    int last = 0, versions = 0, failures = 0, reads = 0;
    double give_up = now() + 15;
    while (last < n && now() < give_up) {
        int error;
        int v = read_version(target, reads % 10 == 9, &error);
        reads++;
        if (v < 0) {
            failures++;
            if (failures <= 5) say("##FAIL rename-read read %d: errno %d", reads, error);
        } else if (v < last) {
            failures++;
            if (failures <= 5) say("##FAIL rename-read version %d after %d", v, last);
        } else if (v > last) {
            versions++;
            last = v;
        }
    }
    say("##SEEN rename-read %d %d last %d reads %d", versions, failures, last, reads);
}

static void close_to_open(void) {
    char lock_path[512], file[512];
    path(lock_path, "cto.lock");
    path(file, "cto");
    int lock_fd = open(lock_path, O_RDWR);
    if (lock_fd < 0) { say("##FAIL close-to-open lock file %d", errno); return; }
    if (id == 0) {
        for (int v = 1; v <= n; v++) {
            posix_lock(lock_fd, F_WRLCK, 0, 0, F_SETLKW);
            int length = make_version(big, v);
            int fd = open(file, O_WRONLY | O_TRUNC);
            if (fd < 0 || write(fd, big, (size_t)length) != length || close(fd) != 0) say("##FAIL close-to-open write %d", errno);
            posix_lock(lock_fd, F_UNLCK, 0, 0, F_SETLK);
            usleep(2000);
        }
        close(lock_fd);
        return;
    }
    int last = 0, versions = 0, failures = 0, reads = 0;
    double give_up = now() + 15;
    while (last < n && now() < give_up) {
        posix_lock(lock_fd, F_RDLCK, 0, 0, F_SETLKW);
        int error;
        int v = read_version(file, 0, &error);
        posix_lock(lock_fd, F_UNLCK, 0, 0, F_SETLK);
        reads++;
        if (v < 0 || v < last) {
            failures++;
            if (failures <= 5) say("##FAIL close-to-open read %d: version %d after %d, errno %d", reads, v, last, error);
        } else if (v > last) {
            versions++;
            last = v;
        }
        usleep(1000);
    }
    close(lock_fd);
    say("##SEEN close-to-open %d %d last %d reads %d", versions, failures, last, reads);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: twoguests ID N DIR\n");
        return 2;
    }
    id = atoi(argv[1]);
    n = atoi(argv[2]);
    dir = argv[3];
    char name[512];
    path(name, "barrier");
    barrier_fd = open(name, O_RDWR);
    if (barrier_fd < 0) { perror(name); return 2; }
    barrier(0); counter(0);
    barrier(1); counter(1);
    barrier(2); excl();
    barrier(3); append();
    barrier(4); rename_read();
    barrier(5); close_to_open();
    say("##DONE");
    return 0;
}
