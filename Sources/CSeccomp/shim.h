// SPDX-License-Identifier: Apache-2.0
#include <seccomp.h>

/// The actions, as functions: the macros that define them do not import.
static inline unsigned int cvfs_scmp_kill_process(void) { return SCMP_ACT_KILL_PROCESS; }
static inline unsigned int cvfs_scmp_log(void) { return SCMP_ACT_LOG; }
static inline unsigned int cvfs_scmp_trap(void) { return SCMP_ACT_TRAP; }
static inline unsigned int cvfs_scmp_allow(void) { return SCMP_ACT_ALLOW; }
