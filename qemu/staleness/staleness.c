// SPDX-License-Identifier: Apache-2.0
//
// The guest side of qemu/staleness/run.
//
//   staleness watch ITEMS SECONDS   polls each item of the file ITEMS ("ID METHOD PATH" lines) over and over for
//                                   SECONDS, and prints "@@SEEN ID VALUE" whenever what it observes changes
//   staleness change DIR SECONDS    performs the commands the host leaves in DIR as files 1, 2, ... ("OP PATH
//                                   [ARG]", one each), in order, printing "@@DID N" after each
//
// Methods: stat (lstat: "E SIZE MODE MTIME_NS", or "X ERRNO"), data (open, read to the end, close: "D LENGTH
// FNV1A64", or "X ERRNO"), list (opendir, readdir, closedir: "L COUNT FNV1A64" of the sorted names joined by
// '/', or "X ERRNO"). Each goes through the guest's caches as any program's would; the host computes the same
// values from its own view of the file and compares. Commands: rewrite PATH TEXT (in place, same inode),
// append PATH TEXT, chmod PATH OCTAL, create PATH TEXT, unlink PATH, rename FROM TO, mkdir PATH.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_ITEMS 256
#define VALUE 96

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}
#define FNV_START 0xcbf29ce484222325ULL

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static void observe_stat(const char *path, char *out) {
    struct stat st;
    if (lstat(path, &st) != 0) {
        snprintf(out, VALUE, "X %d", errno);
        return;
    }
    snprintf(out, VALUE, "E %lld %o %lld", (long long)st.st_size, (unsigned)st.st_mode,
             (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec);
}

static void observe_data(const char *path, char *out) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(out, VALUE, "X %d", errno);
        return;
    }
    uint64_t h = FNV_START;
    long long length = 0;
    char buffer[65536];
    ssize_t n;
    while ((n = read(fd, buffer, sizeof buffer)) > 0) {
        h = fnv(h, buffer, (size_t)n);
        length += n;
    }
    int error = n < 0 ? errno : 0;
    close(fd);
    if (error) snprintf(out, VALUE, "X %d", error);
    else snprintf(out, VALUE, "D %lld %016llx", length, (unsigned long long)h);
}

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void observe_list(const char *path, char *out) {
    DIR *dir = opendir(path);
    if (!dir) {
        snprintf(out, VALUE, "X %d", errno);
        return;
    }
    char *names[1024];
    int count = 0;
    struct dirent *e;
    while ((e = readdir(dir)) && count < 1024) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        names[count++] = strdup(e->d_name);
    }
    closedir(dir);
    qsort(names, (size_t)count, sizeof names[0], compare_names);
    uint64_t h = FNV_START;
    for (int i = 0; i < count; i++) {
        if (i > 0) h = fnv(h, "/", 1);
        h = fnv(h, names[i], strlen(names[i]));
        free(names[i]);
    }
    snprintf(out, VALUE, "L %d %016llx", count, (unsigned long long)h);
}

static int watch(const char *items_path, double seconds) {
    FILE *f = fopen(items_path, "r");
    if (!f) { perror(items_path); return 2; }
    static int ids[MAX_ITEMS];
    static char methods[MAX_ITEMS][8], paths[MAX_ITEMS][256], last[MAX_ITEMS][VALUE];
    int count = 0;
    while (count < MAX_ITEMS && fscanf(f, "%d %7s %255s", &ids[count], methods[count], paths[count]) == 3) count++;
    fclose(f);
    double end = now() + seconds;
    char value[VALUE], line[VALUE + 32];
    while (now() < end) {
        for (int i = 0; i < count; i++) {
            switch (methods[i][0]) {
            case 's': observe_stat(paths[i], value); break;
            case 'd': observe_data(paths[i], value); break;
            default: observe_list(paths[i], value); break;
            }
            if (strcmp(value, last[i]) != 0) {
                strcpy(last[i], value);
                int n = snprintf(line, sizeof line, "@@SEEN %d %s\n", ids[i], value);
                if (write(1, line, (size_t)n) < 0) return 2;
            }
        }
        usleep(10000);
    }
    return 0;
}

// One command: "OP PATH [ARG]".
static int perform(char *command) {
    char op[16], path[256], arg[256] = "";
    if (sscanf(command, "%15s %255s %255[^\n]", op, path, arg) < 2) return EINVAL;
    int fd, r = 0;
    if (strcmp(op, "rewrite") == 0 || strcmp(op, "append") == 0 || strcmp(op, "create") == 0) {
        int flags = op[0] == 'r' ? O_WRONLY : op[0] == 'a' ? O_WRONLY | O_APPEND : O_WRONLY | O_CREAT | O_EXCL;
        if ((fd = open(path, flags, 0644)) < 0) return errno;
        size_t n = strlen(arg);
        if (write(fd, arg, n) != (ssize_t)n) r = errno ? errno : EIO;
        if (close(fd) != 0 && !r) r = errno;
        return r;
    }
    if (strcmp(op, "chmod") == 0) return chmod(path, (mode_t)strtol(arg, NULL, 8)) ? errno : 0;
    if (strcmp(op, "unlink") == 0) return unlink(path) ? errno : 0;
    if (strcmp(op, "rename") == 0) return rename(path, arg) ? errno : 0;
    if (strcmp(op, "mkdir") == 0) return mkdir(path, 0755) ? errno : 0;
    return ENOSYS;
}

static int change(const char *dir, double seconds) {
    double end = now() + seconds;
    char path[512], command[600], line[64];
    for (int next = 1; now() < end;) {
        snprintf(path, sizeof path, "%s/%d", dir, next);
        int fd = open(path, O_RDONLY);
        if (fd < 0) {
            usleep(5000);
            continue;
        }
        ssize_t n = read(fd, command, sizeof command - 1);
        close(fd);
        // The host writes a command in one write(2) after creating the file: an empty read is one caught between.
        if (n <= 0 || command[n - 1] != '\n') {
            usleep(2000);
            continue;
        }
        command[n] = 0;
        int error = perform(command);
        int m = snprintf(line, sizeof line, "@@DID %d %d\n", next, error);
        if (write(1, line, (size_t)m) < 0) return 2;
        next++;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "watch") == 0) return watch(argv[2], atof(argv[3]));
    if (argc == 4 && strcmp(argv[1], "change") == 0) return change(argv[2], atof(argv[3]));
    fprintf(stderr, "usage: staleness watch ITEMS SECONDS | staleness change DIR SECONDS\n");
    return 2;
}
