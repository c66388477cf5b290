// SPDX-License-Identifier: Apache-2.0
// Kernel UAPI headers, imported as they are: every FUSE and virtio wire struct comes from here.
#ifndef CVFS_KERNEL_H
#define CVFS_KERNEL_H

#include <linux/fuse.h>
#include <linux/virtio_ring.h>
#include <linux/virtio_fs.h>
#include <linux/virtio_config.h>

#endif
