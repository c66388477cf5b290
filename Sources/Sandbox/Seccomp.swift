// SPDX-License-Identifier: Apache-2.0

import CSeccomp

/// What happens to a system call outside the allowlist (`--seccomp`).
public enum SeccompAction: String, Sendable, CaseIterable {
    /// The whole process is killed (SIGSYS).
    case kill
    /// The call is allowed and logged by the kernel (audit log, `dmesg`).
    case log
    /// The calling thread gets SIGSYS.
    case trap
    /// No filter.
    case none
}

/// The system-call filter, with libseccomp: the one list of every call the daemon makes on this architecture.
public enum Seccomp {
    /// Every system call the daemon makes after start-up, the Swift runtime's and glibc's included. Found by
    /// running every operation under `--seccomp log`; a test runs every operation under `kill`.
    public static let allowedSyscalls: [String] = [
        // files and directories
        "openat", "open", "close", "close_range", "read", "write", "readv", "writev", "pread64", "pwrite64",
        "preadv", "pwritev", "preadv2", "pwritev2", "lseek", "fstat", "newfstatat", "statx", "fstatfs", "statfs",
        "getdents64", "readlinkat", "mkdirat", "mknodat", "symlinkat", "linkat", "unlinkat", "renameat",
        "renameat2", "fchmod", "fchmodat", "fchown", "fchownat", "ftruncate", "truncate", "utimensat", "fallocate",
        "fsync", "fdatasync", "syncfs", "copy_file_range", "flock", "fcntl", "faccessat", "faccessat2", "fchdir", "chmod",
        "name_to_handle_at", "open_by_handle_at", "ioctl", "dup", "dup3",
        "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr", "llistxattr",
        "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
        // memory
        "mmap", "munmap", "mprotect", "madvise", "mremap", "brk",
        // threads and waiting
        "futex", "clone", "clone3", "set_robust_list", "rseq", "exit", "exit_group", "gettid", "getpid", "tgkill",
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "sched_yield", "sched_getaffinity",
        "nanosleep", "clock_nanosleep", "clock_gettime", "gettimeofday", "getrandom", "prctl", "set_tid_address",
        "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "eventfd2", "poll", "ppoll",
        // the front-end's socket
        "accept4", "accept", "recvmsg", "sendmsg", "shutdown",
        // per-request credentials and per-thread file-system state
        "setresuid", "setresgid", "setgroups", "getuid", "geteuid", "getgid", "getegid", "capget", "capset",
        "umask", "unshare",
        // limits
        "prlimit64", "getrlimit",
    ]

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Installs the filter on the calling thread and every thread it starts afterwards (and sets no_new_privs).
    public static func install(_ action: SeccompAction) throws(Failure) {
        let otherwise: UInt32
        switch action {
        case .none: return
        case .kill: otherwise = cvfs_scmp_kill_process()
        case .log: otherwise = cvfs_scmp_log()
        case .trap: otherwise = cvfs_scmp_trap()
        }
        guard let filter = seccomp_init(otherwise) else { throw Failure(description: "seccomp_init failed") }
        defer { seccomp_release(filter) }
        for name in allowedSyscalls {
            let number = seccomp_syscall_resolve_name(name)
            // A name this architecture does not have (an older call's) is skipped.
            guard number != __NR_SCMP_ERROR else { continue }
            let result = seccomp_rule_add_array(filter, cvfs_scmp_allow(), number, 0, nil)
            guard result == 0 else { throw Failure(description: "seccomp: cannot allow \(name) (\(result))") }
        }
        let result = seccomp_load(filter)
        guard result == 0 else { throw Failure(description: "seccomp_load failed (\(result))") }
    }
}
