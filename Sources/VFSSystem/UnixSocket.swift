// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// Unix stream sockets with descriptor passing (SCM_RIGHTS), as vhost-user uses them.
public enum UnixSocket {
    /// The most descriptors one message may carry.
    public static let maxDescriptors = 16

    /// Creates, binds and listens on `path`, replacing a stale socket file left there.
    ///
    /// The socket is its owner's alone: mode 0700, or 0770 and owned by `group` when one is given (any local
    /// user who can connect could take the daemon's only front-end slot and send it requests).
    public static func listen(path: String, group: gid_t? = nil, backlog: CInt = 1) throws(Errno) -> OwnedFD {
        // SAFETY: the address is a local sockaddr_un, bound as such for its size; paths' C strings live for each call.
        let fd = OwnedFD(taking: try valueOrErrno { socket(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0) })
        _ = try socketAddress(path)  // the final name must fit
        if let existing = try? unsafe FileDescriptor.currentWorkingDirectory.statx(path), existing.fileType == .socket {
            unsafe unlink(path)
        }
        // Bound under a temporary name and renamed once listening: a client that sees the path can connect
        // (between bind and listen, a connect to the path would be refused), and it has its mode and group
        // before anyone can see it.
        let temporary = path + ".\(getpid()).tmp"
        let staged = (try? socketAddress(temporary)) != nil
        let bound = staged ? temporary : path
        var address = try socketAddress(bound)
        if staged { unsafe unlink(temporary) }
        let mode: mode_t = group == nil ? 0o700 : 0o770
        // The umask covers the moment between bind and chmod when the name is bound in place.
        let previousMask = umask(~mode & 0o777)
        defer { umask(previousMask) }
        try nothingOrErrno {
            unsafe withUnsafePointer(to: &address) {
                unsafe $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    unsafe bind(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
        }
        do throws(Errno) {
            if let group { try nothingOrErrno { unsafe chown(bound, uid_t.max, group) } }
            try nothingOrErrno { unsafe chmod(bound, mode) }
            try nothingOrErrno { Glibc.listen(fd.rawValue, backlog) }
            if staged { try nothingOrErrno { unsafe rename(temporary, path) } }
        } catch {
            unsafe unlink(bound)
            throw error
        }
        return fd
    }

    /// Connects to the socket at `path`.
    public static func connect(path: String) throws(Errno) -> OwnedFD {
        try connect(path: path, type: CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue))
    }

    /// A datagram socket connected to the one at `path` (the system log's `/dev/log`), non-blocking: a send that
    /// would wait fails with EAGAIN instead.
    public static func connectDatagram(path: String) throws(Errno) -> OwnedFD {
        try connect(path: path, type: CInt(SOCK_DGRAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue) | CInt(SOCK_NONBLOCK.rawValue))
    }

    /// A socket of `type` connected to the one at `path`.
    static func connect(path: String, type: CInt) throws(Errno) -> OwnedFD {
        // SAFETY: the address is a local sockaddr_un, read as such for its size.
        let fd = OwnedFD(taking: try valueOrErrno { socket(AF_UNIX, type, 0) })
        var address = try socketAddress(path)
        try nothingOrErrno {
            unsafe withUnsafePointer(to: &address) {
                unsafe $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    unsafe Glibc.connect(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
        }
        return fd
    }

    /// Sends `bytes` as one message (sendmsg, which the seccomp allowlist has for the front-end's socket).
    public static func send(_ fd: FileDescriptor, _ bytes: UnsafeRawBufferPointer) throws(Errno) {
        // SAFETY: the bytes are read during the call; no descriptors are attached.
        _ = try valueOrErrno { unsafe cvfs_send_with_fds(fd.rawValue, bytes.baseAddress, bytes.count, nil, 0) }
    }

    /// Accepts one connection on a listening socket. The corresponding C function is `accept4`.
    public static func accept(_ listener: FileDescriptor) throws(Errno) -> OwnedFD {
        OwnedFD(taking: try valueOrErrno { cvfs_accept4(listener.rawValue, CInt(SOCK_CLOEXEC.rawValue)) })
    }

    /// Two connected ends.
    @frozen
    public struct Pair: ~Copyable {
        public let first: OwnedFD
        public let second: OwnedFD
    }

    /// A connected pair (tests). The corresponding C function is `socketpair`.
    public static func pair() throws(Errno) -> Pair {
        // SAFETY: socketpair writes two descriptors into this local array.
        var fds: [CInt] = [-1, -1]
        try nothingOrErrno { unsafe socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0, &fds) }
        return Pair(first: OwnedFD(taking: fds[0]), second: OwnedFD(taking: fds[1]))
    }

    /// Sends `data` with `fds` attached. The whole of `data` goes in one message or the call fails.
    public static func send(_ socket: FileDescriptor, _ data: UnsafeRawBufferPointer, fds: [CInt] = []) throws(Errno) {
        // SAFETY: the shim reads data.count bytes of the caller's buffer and fds.count descriptors, all valid for the
        // call.
        var sent = try valueOrErrno {
            unsafe fds.withUnsafeBufferPointer { unsafe cvfs_send_with_fds(socket.rawValue, data.baseAddress, data.count, $0.baseAddress, fds.count) }
        }
        while sent < data.count {
            let rest = unsafe UnsafeRawBufferPointer(rebasing: data[sent...])
            sent += try valueOrErrno { unsafe cvfs_send_with_fds(socket.rawValue, rest.baseAddress, rest.count, nil, 0) }
        }
    }

    /// Receives up to `buffer.count` bytes and the descriptors that came with them.
    /// Returns 0 bytes at end of stream. `truncated` is true when descriptors or control data were cut off.
    // SAFETY: the shim writes at most buffer.count bytes and maxDescriptors descriptors into memory valid for the call.
    public static func receive(
        _ socket: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer
    ) throws(Errno) -> (count: Int, fds: ReceivedFDs, truncated: Bool) {
        var fds = [CInt](repeating: -1, count: maxDescriptors)
        var fdCount = 0
        var truncated: CInt = 0
        let n = try valueOrErrno {
            unsafe fds.withUnsafeMutableBufferPointer {
                unsafe cvfs_recv_with_fds(socket.rawValue, buffer.baseAddress, buffer.count, $0.baseAddress, maxDescriptors, &fdCount, &truncated)
            }
        }
        return (n, ReceivedFDs(Array(fds.prefix(fdCount))), truncated != 0)
    }

    /// Receives exactly `buffer.count` bytes with no descriptors; false at end of stream before any byte.
    /// Descriptors that arrive anyway are closed and reported as a protocol error.
    public static func receiveExactly(_ socket: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Bool {
        // SAFETY: each receive is into a part of the caller's buffer, never past its end.
        var done = 0
        while done < buffer.count {
            let rest = unsafe UnsafeMutableRawBufferPointer(rebasing: buffer[done...])
            let (n, fds, _) = unsafe try receive(socket, into: rest)
            if n == 0 {
                if done == 0 { return false }
                throw .protocolError
            }
            if !fds.isEmpty { throw .protocolError }
            done += n
        }
        return true
    }

    /// Reads what the peer sends within `milliseconds` (a request that needs no parsing), at most 4 KiB.
    public static func drain(_ socket: FileDescriptor, milliseconds: CInt) {
        // SAFETY: read writes at most the local buffer's size into it.
        var buffer = [UInt8](repeating: 0, count: 4096)
        _ = unsafe buffer.withUnsafeMutableBytes { unsafe cvfs_read_within(socket.rawValue, $0.baseAddress, $0.count, milliseconds) }
    }

    /// Shuts both directions of a socket down, waking a thread blocked on it.
    public static func shutdown(_ socket: FileDescriptor) {
        _ = Glibc.shutdown(socket.rawValue, CInt(SHUT_RDWR))
    }

    private static func socketAddress(_ path: String) throws(Errno) -> sockaddr_un {
        // SAFETY: the path's bytes are copied into sun_path only after checking they fit with their NUL.
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else { throw .nameTooLong }
        unsafe withUnsafeMutableBytes(of: &address.sun_path) { raw in
            unsafe raw.copyBytes(from: bytes)
            unsafe raw[bytes.count] = 0
        }
        return address
    }
}
