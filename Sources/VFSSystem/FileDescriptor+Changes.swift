// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

extension FileDescriptor {
    /// The corresponding C function is `mkdirat`.
    public func makeDirectory(_ name: UnsafePointer<CChar>, mode: mode_t) throws(Errno) {
        // SAFETY: the kernel reads the NUL-terminated names passed in (valid for the call) and writes nothing back.
        try nothingOrErrno { unsafe mkdirat(rawValue, name, mode) }
    }

    /// The corresponding C function is `mknodat`.
    public func makeNode(_ name: UnsafePointer<CChar>, mode: mode_t, device: dev_t) throws(Errno) {
        // SAFETY: the kernel reads the NUL-terminated names passed in (valid for the call) and writes nothing back.
        try nothingOrErrno { unsafe mknodat(rawValue, name, mode, device) }
    }

    /// Creates `name` in this directory as a symlink to `target`. The corresponding C function is `symlinkat`.
    public func makeSymbolicLink(_ name: UnsafePointer<CChar>, target: UnsafePointer<CChar>) throws(Errno) {
        // SAFETY: the kernel reads the NUL-terminated names passed in (valid for the call) and writes nothing back.
        try nothingOrErrno { unsafe symlinkat(target, rawValue, name) }
    }

    /// Removes `name` (a directory with `AT_REMOVEDIR`). The corresponding C function is `unlinkat`.
    public func unlink(_ name: UnsafePointer<CChar>, directory: Bool) throws(Errno) {
        // SAFETY: the kernel reads the NUL-terminated names passed in (valid for the call) and writes nothing back.
        try nothingOrErrno { unsafe unlinkat(rawValue, name, directory ? AT_REMOVEDIR : 0) }
    }

    /// Removes the extended attribute `name` of the file this descriptor has open (not an `O_PATH` one). The
    /// corresponding C function is `fremovexattr`.
    public func removeExtendedAttribute(_ name: UnsafePointer<CChar>) throws(Errno) {
        // SAFETY: the kernel reads the NUL-terminated name passed in (valid for the call) and writes nothing back.
        try nothingOrErrno { unsafe fremovexattr(rawValue, name) }
    }

    /// The corresponding call is `renameat2`.
    public func rename(_ name: UnsafePointer<CChar>, to newDirectory: FileDescriptor, _ newName: UnsafePointer<CChar>, flags: UInt32) throws(Errno) {
        // SAFETY: the kernel reads the NUL-terminated names passed in (valid for the call) and writes nothing back.
        try nothingOrErrno { unsafe cvfs_renameat2(rawValue, name, newDirectory.rawValue, newName, flags) }
    }

    /// Changes the owner of the file this descriptor names (an `O_PATH` descriptor will do), never following a
    /// symlink; `UInt32.max` leaves an id as it is. The corresponding C function is `fchownat(AT_EMPTY_PATH)`.
    public func changeOwner(uid: UInt32, gid: UInt32) throws(Errno) {
        // SAFETY: an empty C string literal for AT_EMPTY_PATH; nothing is written.
        try nothingOrErrno { unsafe fchownat(rawValue, "", uid, gid, CVFS_AT_EMPTY_PATH | CVFS_AT_SYMLINK_NOFOLLOW) }
    }

    /// Sets access and modification times (`UTIME_NOW`, `UTIME_OMIT` allowed) of the file this descriptor names,
    /// never following a symlink. The corresponding C function is `utimensat(AT_EMPTY_PATH)`.
    public func setTimes(_ times: (timespec, timespec)) throws(Errno) {
        // SAFETY: the two timespecs are a local tuple, read by the kernel during the call.
        var t = [times.0, times.1]
        try nothingOrErrno { unsafe utimensat(rawValue, "", &t, CVFS_AT_EMPTY_PATH | CVFS_AT_SYMLINK_NOFOLLOW) }
    }

    /// The corresponding C function is `fchmod`.
    public func changeMode(_ mode: mode_t) throws(Errno) {
        try nothingOrErrno { fchmod(rawValue, mode) }
    }

    /// The corresponding C function is `ftruncate`.
    public func truncate(to size: Int64) throws(Errno) {
        try nothingOrErrno { ftruncate(rawValue, off_t(size)) }
    }

    /// The corresponding C functions are `fsync` and `fdatasync`.
    public func sync(dataOnly: Bool = false) throws(Errno) {
        try nothingOrErrno { dataOnly ? fdatasync(rawValue) : fsync(rawValue) }
    }

    /// The corresponding C function is `fallocate`.
    public func allocate(mode: CInt, offset: Int64, length: Int64) throws(Errno) {
        try nothingOrErrno { cvfs_fallocate(rawValue, mode, offset, length) }
    }

    /// The corresponding C function is `syncfs`.
    public func syncFileSystem() throws(Errno) {
        try nothingOrErrno { cvfs_syncfs(rawValue) }
    }

    /// Copies `length` bytes from this file at `offset` to `destination` at `destinationOffset`.
    /// The corresponding C function is `copy_file_range`.
    public func copyRange(offset: Int64, to destination: FileDescriptor, at destinationOffset: Int64, length: Int, flags: UInt32) throws(Errno) -> Int {
        // SAFETY: the offsets are locals the kernel updates during the call.
        var from = offset
        var to = destinationOffset
        return try valueOrErrno { unsafe cvfs_copy_file_range(rawValue, &from, destination.rawValue, &to, length, flags) }
    }

    /// A record lock on this open file description (F_OFD_*). `length` 0 means to the end of the file.
    public struct RecordLock: Sendable, Equatable {
        public var type: CShort
        public var start: Int64
        public var length: Int64
        /// The holder's process id for GETLK: -1 for an open-file-description lock.
        public var pid: CInt
        public init(type: CShort, start: Int64, length: Int64, pid: CInt = 0) {
            self.type = type
            self.start = start
            self.length = length
            self.pid = pid
        }
    }

    /// F_OFD_GETLK: the lock that conflicts with `lock`, or `lock` with type F_UNLCK.
    public func conflictingLock(_ lock: RecordLock) throws(Errno) -> RecordLock {
        // SAFETY: the shim writes the lock's fields through pointers to this local copy, during the call.
        var result = lock
        try nothingOrErrno { unsafe cvfs_ofd_lock(rawValue, 0, &result.type, &result.start, &result.length, &result.pid) }
        return result
    }

    /// F_OFD_SETLK, or F_OFD_SETLKW when `wait`; a wait interrupted by a signal throws EINTR (it is not retried).
    public func setLock(_ lock: RecordLock, wait: Bool) throws(Errno) {
        // SAFETY: the shim reads and writes this local copy's fields during the call.
        var l = lock
        var pid: CInt = 0
        try nothingOrErrno(retryOnInterrupt: false) { unsafe cvfs_ofd_lock(rawValue, wait ? 2 : 1, &l.type, &l.start, &l.length, &pid) }
    }

    /// BSD `flock` on this open file description; a wait interrupted by a signal throws EINTR.
    public func flock(_ operation: CInt) throws(Errno) {
        try nothingOrErrno(retryOnInterrupt: false) { cvfs_flock(rawValue, operation) }
    }
}

/// Path-based calls, for files an `O_PATH` descriptor cannot act on (reached as `/proc/self/fd/N`).
public enum PathCalls {
    /// The corresponding C function is `chmod`.
    public static func changeMode(_ path: UnsafePointer<CChar>, _ mode: mode_t) throws(Errno) {
        // SAFETY: the kernel reads the NUL-terminated names passed in (valid for the call) and writes nothing back.
        try nothingOrErrno { unsafe chmod(path, mode) }
    }

    /// The corresponding C function is `truncate`.
    public static func truncate(_ path: UnsafePointer<CChar>, to size: Int64) throws(Errno) {
        // SAFETY: the kernel reads the NUL-terminated names passed in (valid for the call) and writes nothing back.
        try nothingOrErrno { unsafe Glibc.truncate(path, off_t(size)) }
    }

    /// Hard-links the file at `path` (following the magic link to its inode) as `name` in `directory`.
    /// The corresponding C function is `linkat(AT_SYMLINK_FOLLOW)`.
    public static func link(_ path: UnsafePointer<CChar>, in directory: FileDescriptor, as name: UnsafePointer<CChar>) throws(Errno) {
        // SAFETY: the kernel reads the NUL-terminated names passed in (valid for the call) and writes nothing back.
        try nothingOrErrno { unsafe linkat(CVFS_AT_FDCWD, path, directory.rawValue, name, AT_SYMLINK_FOLLOW) }
    }

    /// The corresponding C function is `setxattr`.
    public static func setExtendedAttribute(_ path: UnsafePointer<CChar>, _ name: UnsafePointer<CChar>, _ value: UnsafeRawBufferPointer, flags: CInt) throws(Errno) {
        // SAFETY: the kernel reads the names and value.count bytes of the value, all valid for the call.
        try nothingOrErrno { unsafe setxattr(path, name, value.baseAddress, value.count, flags) }
    }

    /// The corresponding C function is `removexattr`.
    public static func removeExtendedAttribute(_ path: UnsafePointer<CChar>, _ name: UnsafePointer<CChar>) throws(Errno) {
        // SAFETY: the kernel reads the NUL-terminated names passed in (valid for the call) and writes nothing back.
        try nothingOrErrno { unsafe removexattr(path, name) }
    }
}

/// The calling thread's credentials. glibc's wrappers change every thread; these use the raw system calls,
/// so each queue worker runs a request as its guest user without touching the others.
public enum ThreadCredentials {
    /// Sets the thread's effective (and so file-system) group and user ids; real and saved ids stay, so the
    /// thread can switch back.
    public static func become(uid: UInt32, gid: UInt32) throws(Errno) {
        // The group first: once the uid is not root, the gid can no longer change.
        try nothingOrErrno { cvfs_setresgid_thread(UInt32.max, gid, UInt32.max) }
        do {
            try nothingOrErrno { cvfs_setresuid_thread(UInt32.max, uid, UInt32.max) }
        } catch {
            _ = cvfs_setresgid_thread(UInt32.max, 0, UInt32.max)
            throw error
        }
    }

    /// Goes back to root (effective ids 0).
    public static func restoreRoot() {
        _ = cvfs_setresuid_thread(UInt32.max, 0, UInt32.max)
        _ = cvfs_setresgid_thread(UInt32.max, 0, UInt32.max)
    }

    /// The process's effective user id.
    public static var effectiveUID: UInt32 { geteuid() }

    /// Makes `gid` the calling thread's only supplementary group (needs CAP_SETGID: call it before `become`).
    public static func setSupplementaryGroup(_ gid: UInt32) throws(Errno) {
        // SAFETY: the kernel reads the one gid during the call.
        var group = gid
        try nothingOrErrno { unsafe cvfs_setgroups_thread(1, &group) }
    }

    /// Drops supplementary groups of the calling thread.
    public static func clearSupplementaryGroups() throws(Errno) {
        try nothingOrErrno { cvfs_setgroups_thread(0, nil) }
    }
}

extension ThreadCredentials {
    /// Sets the calling thread's own umask (after giving it its own fs state); returns the previous mask.
    public static func setThreadUmask(_ mask: mode_t) throws(Errno) -> mode_t {
        try nothingOrErrno { cvfs_unshare_fs() }
        return umask(mask)
    }
}

extension ProcessSettings {
    /// Sets the process's file-creation mask; returns the previous one.
    @discardableResult
    public static func setUmask(_ mask: mode_t) -> mode_t { umask(mask) }
}
