// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc

/// An epoll instance, used by one thread.
public struct Epoll: ~Copyable, Sendable {
    public let fd: OwnedFD

    /// The corresponding C function is `epoll_create1(EPOLL_CLOEXEC)`.
    public init() throws(Errno) {
        fd = OwnedFD(taking: try valueOrErrno { epoll_create1(CInt(EPOLL_CLOEXEC)) })
    }

    /// Watches `target` for input; `token` comes back with each of its events.
    public func add(_ target: FileDescriptor, token: UInt64) throws(Errno) {
        // SAFETY: epoll_ctl reads this local event during the call.
        var event = unsafe epoll_event()
        unsafe event.events = EPOLLIN.rawValue
        unsafe event.data.u64 = token
        try nothingOrErrno { unsafe epoll_ctl(fd.rawValue, EPOLL_CTL_ADD, target.rawValue, &event) }
    }

    /// Stops watching `target`.
    public func remove(_ target: FileDescriptor) {
        // SAFETY: epoll_ctl reads this local event during the call.
        var event = unsafe epoll_event()
        _ = unsafe epoll_ctl(fd.rawValue, EPOLL_CTL_DEL, target.rawValue, &event)
    }

    /// Waits for events and returns the tokens of the ready descriptors in `tokens`; returns their number.
    /// An interrupted wait returns 0. `timeoutMilliseconds` of -1 waits for ever.
    public func wait(into tokens: UnsafeMutableBufferPointer<UInt64>, timeoutMilliseconds: CInt = -1) throws(Errno) -> Int {
        // SAFETY: epoll_wait writes at most `capacity` events into the temporary allocation; at most that many tokens
        // are copied out, and `capacity` is no more than `tokens.count`.
        let capacity = min(tokens.count, 16)
        return try unsafe withUnsafeTemporaryAllocation(of: epoll_event.self, capacity: capacity) { events throws(Errno) -> Int in
            let n = unsafe epoll_wait(fd.rawValue, events.baseAddress, CInt(capacity), timeoutMilliseconds)
            if n < 0 {
                let error = Errno.current
                if error == .interrupted { return 0 }
                throw error
            }
            for i in 0..<Int(n) { unsafe tokens[i] = unsafe events[i].data.u64 }
            return Int(n)
        }
    }
}
