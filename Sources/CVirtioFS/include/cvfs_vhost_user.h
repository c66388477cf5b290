// SPDX-License-Identifier: Apache-2.0
// vhost-user message layouts (QEMU docs/interop/vhost-user.rst, "Message Specification").
// All fields are little-endian; the structs are packed exactly as the specification lays them out.
#ifndef CVFS_VHOST_USER_H
#define CVFS_VHOST_USER_H

#include <stdint.h>

/// Every message starts with this header; `size` bytes of payload follow.
typedef struct __attribute__((packed)) {
    uint32_t request;
    uint32_t flags;
    uint32_t size;
} cvfs_vhost_user_header;

/// "A vring state description": SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE, SET_VRING_ENABLE.
typedef struct __attribute__((packed)) {
    uint32_t index;
    uint32_t num;
} cvfs_vhost_vring_state;

/// "A vring address description": SET_VRING_ADDR. Addresses are in the front-end's virtual address space.
typedef struct __attribute__((packed)) {
    uint32_t index;
    uint32_t flags;
    uint64_t descriptor;
    uint64_t used;
    uint64_t available;
    uint64_t log;
} cvfs_vhost_vring_addr;

/// One guest memory region.
typedef struct __attribute__((packed)) {
    uint64_t guest_address;
    uint64_t size;
    uint64_t user_address;
    uint64_t mmap_offset;
} cvfs_vhost_memory_region;

#define CVFS_VHOST_MEMORY_BASELINE_NREGIONS 8

/// "Memory regions description": SET_MEM_TABLE (one fd per region).
typedef struct __attribute__((packed)) {
    uint32_t num_regions;
    uint32_t padding;
    cvfs_vhost_memory_region regions[CVFS_VHOST_MEMORY_BASELINE_NREGIONS];
} cvfs_vhost_memory;

/// "Single memory region description": ADD_MEM_REG and REM_MEM_REG.
typedef struct __attribute__((packed)) {
    uint64_t padding;
    cvfs_vhost_memory_region region;
} cvfs_vhost_single_memory_region;

/// "Virtio device config space" (GET_CONFIG, SET_CONFIG): this header, then `size` bytes of the space from
/// `offset`.
typedef struct __attribute__((packed)) {
    uint32_t offset;
    uint32_t size;
    uint32_t flags;
} cvfs_vhost_user_config_header;

/// The largest config space a GET_CONFIG may ask for (VHOST_USER_MAX_CONFIG_SIZE).
#define CVFS_VHOST_USER_MAX_CONFIG_SIZE 256

_Static_assert(sizeof(cvfs_vhost_user_config_header) == 12, "config header is 12 bytes");
_Static_assert(sizeof(cvfs_vhost_user_header) == 12, "vhost-user header is 12 bytes");
_Static_assert(sizeof(cvfs_vhost_vring_state) == 8, "vring state is 8 bytes");
_Static_assert(sizeof(cvfs_vhost_vring_addr) == 40, "vring address is 40 bytes");
_Static_assert(sizeof(cvfs_vhost_memory_region) == 32, "memory region is 32 bytes");
_Static_assert(sizeof(cvfs_vhost_memory) == 8 + 8 * 32, "memory table is 264 bytes");
_Static_assert(sizeof(cvfs_vhost_single_memory_region) == 40, "single memory region is 40 bytes");

#endif
