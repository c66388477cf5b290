// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// Flags for `open`, as the kernel defines them.
public struct OpenFlags: OptionSet, Sendable, Hashable {
    public let rawValue: CInt
    @inlinable public init(rawValue: CInt) { self.rawValue = rawValue }

    public static let readOnly = OpenFlags([])
    public static let writeOnly = OpenFlags(rawValue: O_WRONLY)
    public static let readWrite = OpenFlags(rawValue: O_RDWR)
    public static let create = OpenFlags(rawValue: O_CREAT)
    public static let exclusive = OpenFlags(rawValue: O_EXCL)
    public static let truncate = OpenFlags(rawValue: O_TRUNC)
    public static let append = OpenFlags(rawValue: O_APPEND)
    public static let nonBlocking = OpenFlags(rawValue: O_NONBLOCK)
    public static let directory = OpenFlags(rawValue: CVFS_O_DIRECTORY)
    public static let noFollow = OpenFlags(rawValue: CVFS_O_NOFOLLOW)
    public static let closeOnExec = OpenFlags(rawValue: CVFS_O_CLOEXEC)
    public static let path = OpenFlags(rawValue: CVFS_O_PATH)
    public static let noControllingTerminal = OpenFlags(rawValue: O_NOCTTY)
}

extension FileDescriptor {
    /// Opens `name` relative to this directory. `O_CLOEXEC` is always added.
    /// The corresponding C function is `openat`.
    // SAFETY: the kernel reads the NUL-terminated name, valid for the call.
    public func open(
        _ name: UnsafePointer<CChar>, flags: OpenFlags, mode: mode_t = 0, retryOnInterrupt: Bool = true
    ) throws(Errno) -> OwnedFD {
        let fd = try valueOrErrno(retryOnInterrupt: retryOnInterrupt) {
            unsafe openat(rawValue, name, flags.union(.closeOnExec).rawValue, mode)
        }
        return OwnedFD(taking: fd)
    }

    /// Opens `path` (absolute, or relative to the working directory). `O_CLOEXEC` is always added.
    public static func open(_ path: String, flags: OpenFlags, mode: mode_t = 0) throws(Errno) -> OwnedFD {
        // SAFETY: the String's C representation lives for the call.
        try unsafe FileDescriptor.currentWorkingDirectory.open(path, flags: flags, mode: mode)
    }

    /// The attributes of the file this descriptor names, without following a symlink it may name.
    /// The corresponding C function is `fstatat(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)`.
    public func stat() throws(Errno) -> FileStat {
        // SAFETY: fstat fills this local struct during the call.
        var s = Glibc.stat()
        try nothingOrErrno { unsafe fstatat(rawValue, "", &s, CVFS_AT_EMPTY_PATH | CVFS_AT_SYMLINK_NOFOLLOW) }
        return FileStat(s)
    }

    /// statx(2) of `name` in this directory (or of this descriptor itself when `name` is empty), never following a
    /// symlink, asking for the basic fields, the mount id and the birth time; `syncFlags` are AT_STATX_* bits.
    private func statxBuffer(_ name: UnsafePointer<CChar>, syncFlags: CInt = 0) throws(Errno) -> CVirtioFS.statx {
        // SAFETY: statx fills this local struct during the call and reads the NUL-terminated name.
        var s = CVirtioFS.statx()
        let flags = CVFS_AT_EMPTY_PATH | CVFS_AT_SYMLINK_NOFOLLOW | (syncFlags & CVFS_AT_STATX_SYNC_TYPE)
        try nothingOrErrno {
            unsafe cvfs_statx(rawValue, name, flags, CVFS_STATX_BASIC_STATS | CVFS_STATX_MNT_ID | CVFS_STATX_BTIME, &s)
        }
        return s
    }

    /// The attributes of `name` in this directory (or of this descriptor itself when `name` is empty),
    /// never following a symlink, with the mount id and birth time. The corresponding C function is `statx`.
    public func statx(_ name: UnsafePointer<CChar>) throws(Errno) -> FileStat {
        FileStat(try unsafe statxBuffer(name))
    }

    /// This descriptor's file's attributes with the mask of what the file system filled in and its statx
    /// attribute flags. `syncFlags` are the caller's AT_STATX_* synchronisation bits (others are ignored).
    /// The corresponding C function is `statx`.
    public func extendedStat(syncFlags: CInt = 0) throws(Errno) -> ExtendedFileStat {
        ExtendedFileStat(try unsafe statxBuffer("", syncFlags: syncFlags))
    }

    /// Reads the target of the symlink this descriptor names into `buffer`, returning its length.
    /// The corresponding C function is `readlinkat(fd, "", ...)`.
    public func readLink(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        // SAFETY: the kernel writes at most buffer.count bytes into the caller's buffer, valid for the call.
        guard let base = buffer.baseAddress else { throw .invalidArgument }
        return try valueOrErrno { unsafe readlinkat(rawValue, "", base.assumingMemoryBound(to: CChar.self), buffer.count) }
    }

    /// Reads into the buffers `vectors` from `offset`. The corresponding C function is `preadv`.
    public func read(into vectors: UnsafeBufferPointer<iovec>, at offset: Int64) throws(Errno) -> Int {
        // SAFETY: the kernel writes into the caller's buffers, each valid for its iov_len during the call.
        try valueOrErrno { unsafe preadv(rawValue, vectors.baseAddress, CInt(vectors.count), off_t(offset)) }
    }

    /// Writes the buffers `vectors` at `offset`. The corresponding C function is `pwritev`.
    public func write(from vectors: UnsafeBufferPointer<iovec>, at offset: Int64) throws(Errno) -> Int {
        // SAFETY: the kernel reads the caller's buffers, each valid for its iov_len during the call.
        try valueOrErrno { unsafe pwritev(rawValue, vectors.baseAddress, CInt(vectors.count), off_t(offset)) }
    }

    /// Reads into `buffer` from `offset`. The corresponding C function is `pread`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(Errno) -> Int {
        // SAFETY: the kernel writes at most buffer.count bytes into the caller's buffer, valid for the call.
        try valueOrErrno { unsafe pread(rawValue, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    /// Writes `buffer` at `offset`. The corresponding C function is `pwrite`.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: Int64) throws(Errno) -> Int {
        // SAFETY: the kernel reads buffer.count bytes of the caller's buffer, valid for the call.
        try valueOrErrno { unsafe pwrite(rawValue, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    /// Reads into `buffer` at the current position. The corresponding C function is `read`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        // SAFETY: the kernel writes at most buffer.count bytes into the caller's buffer, valid for the call.
        try valueOrErrno { unsafe Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// Writes `buffer` at the current position. The corresponding C function is `write`.
    public func write(_ buffer: UnsafeRawBufferPointer) throws(Errno) -> Int {
        // SAFETY: the kernel reads buffer.count bytes of the caller's buffer, valid for the call.
        try valueOrErrno { unsafe Glibc.write(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// Moves the file position. The corresponding C function is `lseek`.
    @discardableResult
    public func seek(to offset: Int64, whence: CInt = SEEK_SET) throws(Errno) -> Int64 {
        Int64(try valueOrErrno { lseek(rawValue, off_t(offset), whence) })
    }

    /// Reads directory entries (`struct linux_dirent64`) into `buffer`. The corresponding call is `getdents64`.
    public func directoryEntries(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        // SAFETY: the kernel writes at most buffer.count bytes into the caller's buffer, valid for the call.
        try valueOrErrno { unsafe cvfs_getdents64(rawValue, buffer.baseAddress, buffer.count) }
    }

    /// Statistics of the file system holding this file. The corresponding C function is `fstatvfs`.
    public func fileSystemStats() throws(Errno) -> FileSystemStats {
        // SAFETY: fstatvfs fills this local struct during the call.
        var s = Glibc.statvfs()
        try nothingOrErrno { unsafe fstatvfs(rawValue, &s) }
        return FileSystemStats(
            blocks: UInt64(s.f_blocks), freeBlocks: UInt64(s.f_bfree), availableBlocks: UInt64(s.f_bavail),
            files: UInt64(s.f_files), freeFiles: UInt64(s.f_ffree), blockSize: UInt32(truncatingIfNeeded: s.f_bsize),
            nameMax: UInt32(truncatingIfNeeded: s.f_namemax), fragmentSize: UInt32(truncatingIfNeeded: s.f_frsize))
    }

    /// The magic number of the file system holding this file (`f_type`: 0x6969 for NFS, say). The corresponding C
    /// function is `fstatfs`.
    public func fileSystemType() throws(Errno) -> UInt64 {
        UInt64(try valueOrErrno { cvfs_fstatfs_type(rawValue) })
    }

    /// Duplicates the descriptor with `O_CLOEXEC`. The corresponding C function is `fcntl(F_DUPFD_CLOEXEC)`.
    public func duplicate() throws(Errno) -> OwnedFD {
        OwnedFD(taking: try valueOrErrno { fcntl(rawValue, F_DUPFD_CLOEXEC, 0) })
    }
}

/// Extended attributes, by path (`/proc/self/fd/N` reaches an `O_PATH` descriptor's file).
public enum ExtendedAttributes {
    /// The corresponding C function is `getxattr`.
    // SAFETY: the kernel reads the names and writes at most buffer.count bytes (none when it is empty).
    public static func get(
        path: UnsafePointer<CChar>, name: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer
    ) throws(Errno) -> Int {
        try valueOrErrno { unsafe getxattr(path, name, buffer.baseAddress, buffer.count) }
    }

    /// The corresponding C function is `listxattr`.
    public static func list(path: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        // SAFETY: the kernel reads the path and writes at most buffer.count bytes (none when it is empty).
        try valueOrErrno { unsafe listxattr(path, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), buffer.count) }
    }
}
