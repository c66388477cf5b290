// SPDX-License-Identifier: Apache-2.0
#include <seccomp.h>
#include <errno.h>
#include <linux/sched.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>

/// The actions, as functions: the macros that define them do not import.
static inline unsigned int cvfs_scmp_kill_process(void) { return SCMP_ACT_KILL_PROCESS; }
static inline unsigned int cvfs_scmp_log(void) { return SCMP_ACT_LOG; }
static inline unsigned int cvfs_scmp_trap(void) { return SCMP_ACT_TRAP; }
static inline unsigned int cvfs_scmp_allow(void) { return SCMP_ACT_ALLOW; }
/// The call fails with ENOSYS instead of running.
static inline unsigned int cvfs_scmp_enosys(void) { return SCMP_ACT_ERRNO(ENOSYS); }

/// clone(2) flags that make a new namespace (CLONE_NEWTIME is clone3's only: in clone's flags its bit is part
/// of the exit signal).
static inline uint64_t cvfs_clone_namespace_flags(void) {
    return CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET;
}
static inline uint64_t cvfs_clone_thread(void) { return CLONE_THREAD; }
static inline uint64_t cvfs_clone_fs(void) { return CLONE_FS; }
static inline uint64_t cvfs_pr_set_name(void) { return PR_SET_NAME; }
static inline uint64_t cvfs_pr_get_name(void) { return PR_GET_NAME; }
static inline uint64_t cvfs_tcgets(void) { return TCGETS; }
