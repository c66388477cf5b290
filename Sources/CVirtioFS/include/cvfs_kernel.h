// SPDX-License-Identifier: Apache-2.0
// Kernel UAPI headers, imported as they are: every FUSE and virtio wire struct comes from here.
#ifndef CVFS_KERNEL_H
#define CVFS_KERNEL_H

#include <linux/fuse.h>
#include <linux/virtio_ring.h>
#include <stddef.h>

// The packed-ring layout PackedQueue reads and writes at fixed offsets (virtio 1.2 §2.8.13).
_Static_assert(sizeof(struct vring_packed_desc) == 16, "a packed descriptor is 16 bytes");
_Static_assert(offsetof(struct vring_packed_desc, len) == 8, "len at 8");
_Static_assert(offsetof(struct vring_packed_desc, id) == 12, "id at 12");
_Static_assert(offsetof(struct vring_packed_desc, flags) == 14, "flags at 14");
_Static_assert(sizeof(struct vring_packed_desc_event) == 4, "an event suppression structure is 4 bytes");
_Static_assert(offsetof(struct vring_packed_desc_event, flags) == 2, "its flags at 2");
#include <linux/virtio_fs.h>
#include <linux/virtio_config.h>

// The protocol this server speaks: 7.41. The system's <linux/fuse.h> may be older (Debian 12's is 7.38, from
// Linux 6.1); what 7.38 (as amended in Linux 6.3) to 7.41 added and the server uses is declared below, with the
// kernel's own names and layout, only where the header lacks it. Sizes are checked in shim.c.
#define CVFS_FUSE_KERNEL_MINOR_VERSION 41

#ifndef FUSE_CREATE_SUPP_GROUP
// 7.38 (Linux 6.3): the caller's supplementary group that owns the parent of a new file, as an extension.
#define FUSE_CREATE_SUPP_GROUP (1ULL << 34)
#define FUSE_EXT_GROUPS 32
struct fuse_supp_groups {
    uint32_t nr_groups;
    uint32_t groups[];
};
#endif

#if FUSE_KERNEL_MINOR_VERSION < 39
// 7.39 (Linux 6.6): shared mappings of DIRECT_IO files; FUSE_STATX.
#define FUSE_DIRECT_IO_ALLOW_MMAP (1ULL << 36)
#define FUSE_STATX 52

struct fuse_sx_time {
    int64_t tv_sec;
    uint32_t tv_nsec;
    int32_t __reserved;
};

struct fuse_statx {
    uint32_t mask;
    uint32_t blksize;
    uint64_t attributes;
    uint32_t nlink;
    uint32_t uid;
    uint32_t gid;
    uint16_t mode;
    uint16_t __spare0[1];
    uint64_t ino;
    uint64_t size;
    uint64_t blocks;
    uint64_t attributes_mask;
    struct fuse_sx_time atime;
    struct fuse_sx_time btime;
    struct fuse_sx_time ctime;
    struct fuse_sx_time mtime;
    uint32_t rdev_major;
    uint32_t rdev_minor;
    uint32_t dev_major;
    uint32_t dev_minor;
    uint64_t __spare2[14];
};

struct fuse_statx_in {
    uint32_t getattr_flags;
    uint32_t reserved;
    uint64_t fh;
    uint32_t sx_flags;
    uint32_t sx_mask;
};

struct fuse_statx_out {
    uint64_t attr_valid;
    uint32_t attr_valid_nsec;
    uint32_t flags;
    uint64_t spare[2];
    struct fuse_statx stat;
};
#endif

#endif
