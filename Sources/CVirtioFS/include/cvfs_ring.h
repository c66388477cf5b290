// SPDX-License-Identifier: Apache-2.0
// Ordered loads and stores on memory shared with the guest (virtio 1.2 §2.7.13 "Memory barriers").
#ifndef CVFS_RING_H
#define CVFS_RING_H

#include <stdint.h>

/// Loads a 16-bit ring index with acquire ordering: reads of the entries it covers happen after it.
static inline uint16_t cvfs_load_acquire_u16(const void *p) {
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
}

/// Stores a 16-bit ring index with release ordering: the entries it publishes are visible before it.
static inline void cvfs_store_release_u16(void *p, uint16_t v) {
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE);
}

/// A plain (relaxed) 16-bit load from shared memory that the compiler may not cache or tear.
static inline uint16_t cvfs_load_relaxed_u16(const void *p) {
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED);
}

/// A plain (relaxed) 16-bit store to shared memory.
static inline void cvfs_store_relaxed_u16(void *p, uint16_t v) {
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELAXED);
}

/// A relaxed 32-bit load: a packed ring's event suppression structure (offset and wrap, flags) read whole, as
/// the driver writes it.
static inline uint32_t cvfs_load_relaxed_u32(const void *p) {
    return __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED);
}

/// A relaxed 32-bit store: a packed ring's event suppression structure written whole, so that the driver never
/// sees a new offset with old flags.
static inline void cvfs_store_relaxed_u32(void *p, uint32_t v) {
    __atomic_store_n((uint32_t *)p, v, __ATOMIC_RELAXED);
}

/// A full barrier: orders an earlier store (avail_event) before a later load (avail->idx), and the
/// used->idx store before the used_event load (virtio 1.2 §2.7.10, §2.7.14).
static inline void cvfs_fence_seq_cst(void) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/// Sets bits in a byte of the dirty-page log, which the front-end reads and clears concurrently
/// (vhost-user.rst, "Migration": "Use atomic operations").
static inline void cvfs_atomic_or_u8(void *p, uint8_t bits) {
    __atomic_fetch_or((uint8_t *)p, bits, __ATOMIC_RELAXED);
}

/// A counter that one thread adds to and others read (the statistics): a relaxed load and a relaxed store, so
/// readers never see a torn value and the writer pays no locked instruction.
static inline void cvfs_counter_add_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}

static inline uint64_t cvfs_counter_load_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

#endif
