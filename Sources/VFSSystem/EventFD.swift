// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// An eventfd counter: virtqueue kicks and calls, and the stop signal of worker threads.
public struct EventFD: ~Copyable, Sendable {
    public let fd: OwnedFD

    /// A new counter, non-blocking and close-on-exec. The corresponding C function is `eventfd`.
    public init(nonBlocking: Bool = true) throws(Errno) {
        let flags = EFD_CLOEXEC | (nonBlocking ? EFD_NONBLOCK : 0)
        fd = OwnedFD(taking: try valueOrErrno { eventfd(0, CInt(flags)) })
    }

    /// Adopts a descriptor received from the front-end.
    public init(taking fd: consuming OwnedFD) { self.fd = fd }

    /// Adds one to the counter.
    public func signal() { EventFD.signal(fd.borrowed) }

    /// Reads and resets the counter; 0 when it was already zero (non-blocking).
    @discardableResult
    public func drain() -> UInt64 { EventFD.drain(fd.borrowed) }

    /// A blocking counter in semaphore mode: each read takes one (a job queue's "work available").
    public static func semaphore() throws(Errno) -> OwnedFD {
        OwnedFD(taking: try valueOrErrno { eventfd(0, CInt(EFD_CLOEXEC | EFD_SEMAPHORE)) })
    }

    /// Blocks until the semaphore eventfd `fd` is above zero, and takes one.
    public static func waitSemaphore(_ fd: FileDescriptor) {
        // SAFETY: read writes 8 bytes into this local counter.
        var value: UInt64 = 0
        while unsafe Glibc.read(fd.rawValue, &value, 8) < 0 && errno == EINTR {}
    }

    /// Adds one to the counter of the eventfd `fd`.
    public static func signal(_ fd: FileDescriptor) {
        // SAFETY: write reads 8 bytes of this local counter.
        var one: UInt64 = 1
        while unsafe Glibc.write(fd.rawValue, &one, 8) < 0 && errno == EINTR {}
    }

    /// Reads and resets the counter of the eventfd `fd`.
    @discardableResult
    public static func drain(_ fd: FileDescriptor) -> UInt64 {
        // SAFETY: read writes 8 bytes into this local counter.
        var value: UInt64 = 0
        while true {
            let n = unsafe Glibc.read(fd.rawValue, &value, 8)
            if n == 8 { return value }
            if n < 0 && errno == EINTR { continue }
            return 0
        }
    }
}

/// An eventfd that several objects and threads share: closed when the last of them lets it go. A thread that
/// signals it from afar holds a reference, never a bare descriptor number that its owner may close and the
/// process may reuse.
public final class SharedEventFD: Sendable {
    private let event: EventFD

    /// A new non-blocking counter.
    public init() throws(Errno) { event = try EventFD() }

    /// The descriptor, for epoll and poll; valid while this object lives.
    public var descriptor: FileDescriptor { event.fd.borrowed }

    /// Adds one to the counter.
    public func signal() { event.signal() }

    /// Reads and resets the counter.
    @discardableResult
    public func drain() -> UInt64 { event.drain() }

    /// Waits up to `milliseconds` (-1: for ever) for the counter to be above zero; whether it is.
    public func wait(milliseconds: CInt) -> Bool {
        // SAFETY: poll reads and writes this local pollfd during the call.
        var pfd = pollfd(fd: event.fd.rawValue, events: Int16(POLLIN), revents: 0)
        while true {
            let n = unsafe poll(&pfd, 1, milliseconds)
            if n < 0 && errno == EINTR { continue }
            return n == 1
        }
    }
}
