// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc
import Synchronization

/// The process-level calls of sandbox set-up: namespaces, mounts, a new root, child processes.
public enum ProcessControl {
    public static var processID: pid_t { getpid() }
    public static var effectiveGroupID: gid_t { getegid() }

    /// Forks; `nil` in the child, the child's pid in the parent. Only while the process has a single thread.
    public static func fork() throws(Errno) -> pid_t? {
        let pid = try valueOrErrno { cvfs_fork() }
        return pid == 0 ? nil : pid
    }

    /// In a parent that has forked the daemon's working process and only waits for it: passes SIGTERM and
    /// SIGINT on to it (so that it stops as it would itself) and returns its exit status, as `waitForExit`.
    public static func waitForDaemonChild(_ pid: pid_t) -> Int32 {
        cvfs_forward_stop_signals(pid)
        return waitForExit(pid)
    }

    /// Waits for `pid` to end; its exit status, or 128 + the signal that ended it.
    public static func waitForExit(_ pid: pid_t) -> Int32 {
        // SAFETY: waitpid writes the status into this local.
        var status: Int32 = 0
        while unsafe waitpid(pid, &status, 0) == -1 {
            if errno != EINTR { return 1 }
        }
        if status & 0x7f == 0 { return (status >> 8) & 0xff }  // WIFEXITED, WEXITSTATUS
        return 128 + (status & 0x7f)  // WTERMSIG
    }

    /// getppid(2), a call the seccomp allowlist leaves out on purpose (the `--seccomp-probe` test hook).
    public static func callOutsideAllowlist() { _ = getppid() }

    /// Ends the process at once, without running atexit handlers (a forked parent that only waited).
    public static func exitNow(_ status: Int32) -> Never { _exit(status) }

    /// Enters a new user namespace (`user`) and/or new pid, mount and net namespaces (`others`).
    public static func unshare(user: Bool, others: Bool) throws(Errno) {
        try nothingOrErrno { cvfs_unshare_namespaces(user ? 1 : 0, others ? 1 : 0) }
    }

    public static func makeMountsPrivate() throws(Errno) { try nothingOrErrno { cvfs_make_mounts_private() } }
    // SAFETY: the path's C string lives for the call.
    public static func mountProc(at path: String) throws(Errno) { try nothingOrErrno { unsafe cvfs_mount_proc(path) } }
    // SAFETY: the path's C string lives for the call.
    public static func bindOnItself(_ path: String) throws(Errno) { try nothingOrErrno { unsafe cvfs_bind_self(path) } }
    /// Makes the mount at `path`, and the mounts under it, nodev. The corresponding C function is `mount_setattr`.
    // SAFETY: the path's C string lives for the call.
    public static func forbidDevices(under path: String) throws(Errno) { try nothingOrErrno { unsafe cvfs_mount_nodev(path) } }

    /// The id of group `name` (a name from the group database, or a number).
    public static func groupID(named name: String) -> gid_t? {
        // SAFETY: getgrnam returns a static entry, read at once, before any other call could replace it (start-up, one
        // thread).
        if let number = gid_t(name) { return number }
        guard let entry = unsafe getgrnam(name) else { return nil }
        return unsafe entry.pointee.gr_gid
    }

    /// Makes `path` the root of this mount namespace and detaches the old root.
    public static func pivotRoot(to path: String) throws(Errno) {
        // SAFETY: the path's C string lives for the call.
        try nothingOrErrno { unsafe chdir(path) }
        try nothingOrErrno { cvfs_pivot_to_cwd() }
    }

    /// chroot(2) to `path`, then to its "/".
    public static func changeRoot(to path: String) throws(Errno) {
        // SAFETY: the path's C string lives for the call.
        try nothingOrErrno { unsafe chdir(path) }
        try nothingOrErrno { unsafe chroot(".") }
        try nothingOrErrno { unsafe chdir("/") }
    }

    /// The process working directory; every thread that has not unshared its file-system state shares it.
    public static func changeDirectory(to fd: FileDescriptor) throws(Errno) {
        try nothingOrErrno { fchdir(fd.rawValue) }
    }

    public static func setParentDeathSignal(_ signal: Int32) throws(Errno) {
        try nothingOrErrno { cvfs_set_parent_death_signal(signal) }
    }

    public static func setNoNewPrivileges() throws(Errno) { try nothingOrErrno { cvfs_set_no_new_privs() } }

    /// Writes `text` to an existing file such as /proc/PID/uid_map, in one write(2).
    public static func writeFile(_ path: String, _ text: String) throws(Errno) {
        // SAFETY: write reads the bytes of a local array, valid for the call.
        let fd = try valueOrErrno { unsafe open(path, O_WRONLY | O_CLOEXEC) }
        defer { close(fd) }
        var bytes = Array(text.utf8)
        let written = try valueOrErrno { unsafe write(fd, &bytes, bytes.count) }
        guard written == bytes.count else { throw .ioError }
    }

    /// Runs a program found on PATH (newuidmap, newgidmap) and waits for it; its exit status.
    public static func run(_ arguments: [String]) throws(Errno) -> Int32 {
        // SAFETY: argv holds strdup'd strings freed after posix_spawnp returns; the child gets copies.
        var pid: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = unsafe arguments.map { unsafe strdup($0) } + [nil]
        defer { unsafe argv.forEach { unsafe free($0) } }
        let result = unsafe posix_spawnp(&pid, arguments[0], nil, nil, &argv, environ)
        guard result == 0 else { throw Errno(rawValue: result) }
        return waitForExit(pid)
    }
}

/// A pipe for a parent and its child to wait for each other during set-up.
public struct SyncPipe: ~Copyable {
    public let readEnd: OwnedFD
    public let writeEnd: OwnedFD

    public init() throws(Errno) {
        // SAFETY: pipe2 writes two descriptors into this local array.
        var fds: [CInt] = [0, 0]
        try nothingOrErrno { unsafe cvfs_pipe_cloexec(&fds) }
        readEnd = OwnedFD(taking: fds[0])
        writeEnd = OwnedFD(taking: fds[1])
    }

    /// Sends one byte.
    public func signal(_ value: UInt8 = 1) throws(Errno) {
        // SAFETY: write reads one byte of this local.
        var byte = value
        _ = try valueOrErrno { unsafe write(writeEnd.rawValue, &byte, 1) }
    }

    /// Waits for one byte; nil when the other side closed its end first.
    public func wait() throws(Errno) -> UInt8? {
        // SAFETY: read writes one byte into this local.
        var byte: UInt8 = 0
        let n = try valueOrErrno { unsafe read(readEnd.rawValue, &byte, 1) }
        return n == 1 ? byte : nil
    }
}

/// SIGTERM and SIGINT as something to wait for, and SIGUSR1 as a request for a statistics dump: blocked in every
/// thread (those started after `init` inherit the mask), and readable on a signalfd, so that the thread that waits for the front-end sees them between
/// messages and the daemon stops in order instead of dying where it stands.
public final class StopSignals: Sendable {
    public let fd: OwnedFD

    /// Blocks the two signals in the calling thread. Call before any other thread starts (and before a fork:
    /// the child inherits the mask and the descriptor, which then reads the child's own signals).
    public init() throws(Errno) {
        fd = OwnedFD(taking: try valueOrErrno { cvfs_stop_signalfd() })
    }

    /// The stop signal that `waitReadable` consumed, for `take`.
    private let stopping = Atomic<Int32>(0)

    /// Waits until `other` is readable (true) or a stop signal is pending (false). A SIGUSR1 on the way calls
    /// `dump` and the wait goes on.
    public func waitReadable(_ other: FileDescriptor, dump: () -> Void = {}) throws(Errno) -> Bool {
        while true {
            if try valueOrErrno({ cvfs_wait_readable(other.rawValue, fd.rawValue) }) == 1 { return true }
            switch cvfs_stop_signal_read(fd.rawValue) {
            case SIGUSR1: dump()
            case 0: continue
            case let signal:
                stopping.store(signal, ordering: .relaxed)
                return false
            }
        }
    }

    /// The stop signal's name ("SIGTERM", "SIGINT"), the one `waitReadable` saw or else a pending one, or nil.
    public func take() -> String? {
        var signal = stopping.exchange(0, ordering: .relaxed)
        while signal == 0 || signal == SIGUSR1 {
            signal = cvfs_stop_signal_read(fd.rawValue)
            if signal == 0 { return nil }
        }
        switch signal {
        case SIGTERM: return "SIGTERM"
        case SIGINT: return "SIGINT"
        default: return "signal \(signal)"
        }
    }
}
