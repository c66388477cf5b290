// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// A borrowed file descriptor: it does not close what it names.
public struct FileDescriptor: RawRepresentable, Hashable, Sendable {
    public let rawValue: CInt
    @inlinable public init(rawValue: CInt) { self.rawValue = rawValue }

    /// The special `AT_FDCWD` value for the `*at` calls.
    public static let currentWorkingDirectory = FileDescriptor(rawValue: CVFS_AT_FDCWD)
}

/// An owned file descriptor, closed when it goes out of scope.
///
/// Descriptors that arrive over a socket are wrapped in `OwnedFD` at once, so none can leak.
public struct OwnedFD: ~Copyable, @unchecked Sendable {
    public let rawValue: CInt

    /// Takes ownership of `rawValue`.
    @inlinable public init(taking rawValue: CInt) { self.rawValue = rawValue }

    /// A borrowed view of the descriptor.
    @inlinable public var borrowed: FileDescriptor { FileDescriptor(rawValue: rawValue) }

    /// Gives up ownership without closing.
    public consuming func release() -> CInt {
        let fd = rawValue
        discard self
        return fd
    }

    deinit {
        // The only close(2) error worth acting on, EBADF, would be a program bug; EINTR must not be retried
        // on Linux, where the descriptor is already released.
        _ = Glibc.close(rawValue)
    }
}

/// A set of descriptors received together (one vhost-user message), each taken out at most once.
/// Whatever is not taken is closed when the set goes away.
public final class ReceivedFDs: @unchecked Sendable {
    private var fds: [CInt]

    public init(_ fds: [CInt]) { self.fds = fds }

    /// How many descriptors arrived.
    public var count: Int { fds.count }
    /// Whether none arrived.
    public var isEmpty: Bool { fds.isEmpty }

    /// Takes descriptor `index`, or nil when there is no such descriptor or it was taken already.
    public func take(_ index: Int) -> OwnedFD? {
        guard index >= 0, index < fds.count, fds[index] >= 0 else { return nil }
        let fd = fds[index]
        fds[index] = -1
        return OwnedFD(taking: fd)
    }

    deinit {
        for fd in fds where fd >= 0 { _ = Glibc.close(fd) }
    }
}
