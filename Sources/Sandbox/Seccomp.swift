// SPDX-License-Identifier: Apache-2.0

import CSeccomp
import Glibc

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
///
/// Compared with virtiofsd's list (src/seccomp.rs, 1.13): that list allows `clone`, `clone3`, `prctl` and
/// `unshare` with any arguments; this one allows them only with the arguments the daemon uses (see
/// `conditionalRules`), and `ioctl` only for TCGETS (virtiofsd has no ioctl at all). Calls here and not there:
/// the xattr calls by path and by fd both (a node's xattrs are reached through `/proc/self/fd` paths, an open
/// file's through its fd), `readv`/`writev` and `preadv2`/`pwritev2` (the guest's buffers as iovecs),
/// `newfstatat`, `statfs`, `readlinkat`, `fchown`, `truncate`, `chmod`, `faccessat(2)`, `dup3`, `mremap`,
/// `exit`, `gettid`, `sigaltstack`, `nanosleep` (a cancelled lock wait is signalled until it ends), `getrandom`
/// (the Swift runtime's hashing seeds), `poll`/`ppoll` and `eventfd2` (queue workers and stops), `shutdown`,
/// `getuid`/`getgid`, `prlimit64`. Calls there and not here: `membarrier`, `openat2`, `getdents`,
/// `epoll_create`, `time`, `tkill`, `unlink`, `fchdir`-free /proc handling, `sendto` (syslog), which this
/// daemon does not make.
public enum Seccomp {
    /// Every system call the daemon makes after start-up with any arguments, the Swift runtime's and glibc's
    /// included. Found by running every operation under `--seccomp log`; a test runs every operation under
    /// `kill`.
    public static let allowedSyscalls: [String] = [
        // files and directories
        "openat", "open", "close", "close_range", "read", "write", "readv", "writev", "pread64", "pwrite64",
        "preadv", "pwritev", "preadv2", "pwritev2", "lseek", "fstat", "newfstatat", "statx", "fstatfs", "statfs",
        "getdents64", "readlinkat", "mkdirat", "mknodat", "symlinkat", "linkat", "unlinkat", "renameat",
        "renameat2", "fchmod", "fchmodat", "fchown", "fchownat", "ftruncate", "truncate", "utimensat", "fallocate",
        "fsync", "fdatasync", "syncfs", "copy_file_range", "flock", "fcntl", "faccessat", "faccessat2", "fchdir", "chmod",
        "name_to_handle_at", "open_by_handle_at", "dup", "dup3",
        "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr", "listxattr", "llistxattr",
        "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
        // memory
        "mmap", "munmap", "mprotect", "madvise", "mremap", "brk",
        // threads and waiting (clone, prctl and tgkill: see `conditionalRules`)
        "futex", "set_robust_list", "rseq", "exit", "exit_group", "gettid", "getpid",
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "sched_yield", "sched_getaffinity",
        "nanosleep", "clock_nanosleep", "clock_gettime", "gettimeofday", "getrandom", "set_tid_address",
        "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "eventfd2", "poll", "ppoll",
        // the front-end's socket
        "accept4", "accept", "recvmsg", "sendmsg", "shutdown",
        // per-request credentials (unshare: see `conditionalRules`)
        "setresuid", "setresgid", "setgroups", "getuid", "geteuid", "getgid", "getegid", "capget", "capset",
        "umask",
        // limits
        "prlimit64", "getrlimit",
    ]

    /// One comparison on a call's argument: `(argument & mask) == value`.
    public struct ArgumentCheck: Sendable {
        public var argument: UInt32
        public var mask: UInt64
        public var value: UInt64
        static func equal(_ argument: UInt32, _ value: UInt64) -> ArgumentCheck {
            ArgumentCheck(argument: argument, mask: UInt64.max, value: value)
        }
    }

    /// Calls allowed only with certain arguments; each entry is one rule (its checks all hold), and a call may
    /// have several rules (any of them allows it).
    public static var conditionalRules: [(name: String, checks: [ArgumentCheck])] {
        [
            // Threads, and nothing else: a clone without CLONE_THREAD would start a process, and one with a
            // CLONE_NEW* flag a namespace (the sandbox made its namespaces before the filter).
            ("clone", [ArgumentCheck(argument: 0, mask: cvfs_clone_namespace_flags() | cvfs_clone_thread(), value: cvfs_clone_thread())]),
            // Each thread's own umask and working directory (ThreadCredentials.setThreadUmask).
            ("unshare", [.equal(0, cvfs_clone_fs())]),
            // Naming a thread, and reading its name for the crash line.
            ("prctl", [.equal(0, cvfs_pr_set_name())]),
            ("prctl", [.equal(0, cvfs_pr_get_name())]),
            // isatty(3) on the log's descriptor, nothing that changes a terminal (TIOCSTI and the like).
            ("ioctl", [.equal(1, cvfs_tcgets())]),
            // Signals to this process's own threads only: lock waits are woken this way.
            ("tgkill", [.equal(0, UInt64(getpid()))]),
        ]
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Installs the filter on the calling thread and every thread it starts afterwards (and sets no_new_privs).
    public static func install(_ action: SeccompAction) throws(Failure) {
        // SAFETY: the filter is released after loading; the comparisons are a local array read during each rule's call.
        let otherwise: UInt32
        switch action {
        case .none: return
        case .kill: otherwise = cvfs_scmp_kill_process()
        case .log: otherwise = cvfs_scmp_log()
        case .trap: otherwise = cvfs_scmp_trap()
        }
        guard let filter = unsafe seccomp_init(otherwise) else { throw Failure(description: "seccomp_init failed") }
        defer { unsafe seccomp_release(filter) }
        for name in allowedSyscalls {
            let number = unsafe seccomp_syscall_resolve_name(name)
            // A name this architecture does not have (an older call's) is skipped.
            guard number != __NR_SCMP_ERROR else { continue }
            let result = unsafe seccomp_rule_add_array(filter, cvfs_scmp_allow(), number, 0, nil)
            guard result == 0 else { throw Failure(description: "seccomp: cannot allow \(name) (\(result))") }
        }
        for (name, checks) in conditionalRules {
            let number = unsafe seccomp_syscall_resolve_name(name)
            guard number != __NR_SCMP_ERROR else { continue }
            var comparisons = checks.map { check in
                check.mask == UInt64.max
                    ? scmp_arg_cmp(arg: check.argument, op: SCMP_CMP_EQ, datum_a: check.value, datum_b: 0)
                    : scmp_arg_cmp(arg: check.argument, op: SCMP_CMP_MASKED_EQ, datum_a: check.mask, datum_b: check.value)
            }
            let result = unsafe seccomp_rule_add_array(filter, cvfs_scmp_allow(), number, UInt32(comparisons.count), &comparisons)
            guard result == 0 else { throw Failure(description: "seccomp: cannot allow \(name) with its arguments (\(result))") }
        }
        // clone3 passes its flags in memory, where a filter cannot read them: it fails with ENOSYS, and glibc
        // makes its threads with clone instead, whose flags the rule above checks.
        let clone3 = unsafe seccomp_syscall_resolve_name("clone3")
        if clone3 != __NR_SCMP_ERROR {
            let result = unsafe seccomp_rule_add_array(filter, cvfs_scmp_enosys(), clone3, 0, nil)
            guard result == 0 else { throw Failure(description: "seccomp: cannot refuse clone3 (\(result))") }
        }
        let result = unsafe seccomp_load(filter)
        guard result == 0 else { throw Failure(description: "seccomp_load failed (\(result))") }
    }
}
