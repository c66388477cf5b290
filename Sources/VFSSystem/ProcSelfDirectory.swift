// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// `/proc/self/fd`, opened once: the way to reopen a descriptor's file with new flags, to name it to calls that
/// take only a path, and to tell what a descriptor a peer sent really is. Opened before the sandbox hides
/// `/proc`, and shared by whoever needs it, so that it is closed only when the last of them is done.
public final class ProcSelfDirectory: Sendable {
    /// An `O_PATH` descriptor of the directory.
    public let fd: OwnedFD

    /// Opens `/proc/self/fd` by path.
    public init() throws(Errno) {
        fd = try FileDescriptor.open("/proc/self/fd", flags: [.path, .directory])
    }

    /// Adopts a descriptor of `/proc/self/fd` opened earlier.
    public init(taking fd: consuming OwnedFD) { self.fd = fd }

    /// RssAnon of the process's `status` (next to this `fd` directory), KiB; nil if it cannot be read.
    public var anonymousResidentKiB: Int? {
        // SAFETY: read fills at most buffer.count bytes of the local buffer.
        guard let status = try? unsafe fd.borrowed.open("../status", flags: [.readOnly]) else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = unsafe buffer.withUnsafeMutableBytes { unsafe Glibc.read(status.rawValue, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        for line in String(decoding: buffer[0..<n], as: UTF8.self).split(separator: "\n") where line.hasPrefix("RssAnon:") {
            return line.split(separator: " ").dropFirst().first.flatMap { Int($0) }
        }
        return nil
    }

    /// How many descriptors the process has open (the entries of `/proc/self/fd`, less the one that lists
    /// them); nil if it cannot be read.
    public var openDescriptorCount: Int? {
        // SAFETY: getdents64 fills at most the local buffer; each record's length is checked before it is read.
        guard let listing = try? unsafe fd.borrowed.open(".", flags: [.readOnly, .directory]) else { return nil }
        let directory = listing.borrowed
        var count = 0
        var buffer = [UInt8](repeating: 0, count: 32768)
        while true {
            guard let n = try? unsafe buffer.withUnsafeMutableBytes({ (bytes) throws(Errno) -> Int in
                try unsafe directory.directoryEntries(into: bytes)
            }) else { return nil }
            if n <= 0 { break }
            var offset = 0
            while offset + 19 < n {
                // struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, then the name.
                let length = Int(buffer[offset + 16]) | Int(buffer[offset + 17]) << 8
                guard length > 19, offset + length <= n else { break }
                if buffer[offset + 19] != UInt8(ascii: ".") { count += 1 }
                offset += length
            }
        }
        _ = consume listing
        return count - 1
    }

    /// What `/proc/self/fd/N` says descriptor N is ("anon_inode:[eventfd]", "pipe:[123]", a path), or nil.
    public func linkTarget(of descriptor: FileDescriptor) -> String? {
        path(of: descriptor).map { String(decoding: $0, as: UTF8.self) }
    }
}

extension FileDescriptor {
    /// Whether this is an eventfd: an anonymous inode (no file, pipe, socket or device can pass) that
    /// `/proc/self/fd` names `anon_inode:[eventfd]` (checked when `proc` is given).
    public func isEventFD(proc: ProcSelfDirectory?) -> Bool {
        // An anonymous inode has no file type bits at all.
        guard let info = try? stat(), info.mode & 0o170000 == 0 else { return false }
        guard let proc else { return true }
        return proc.linkTarget(of: self) == "anon_inode:[eventfd]"
    }

    /// Whether this is a regular file of at least `length` bytes: what a guest memory region may map without
    /// faulting (SIGBUS) on its first touch past the file's end.
    public func isRegularFile(atLeast length: UInt64) -> Bool {
        guard let info = try? stat(), info.fileType == .regular, info.size >= 0 else { return false }
        return UInt64(info.size) >= length
    }
}
