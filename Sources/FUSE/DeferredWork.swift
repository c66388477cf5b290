// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Synchronization
import VFSSystem

/// The requests of one queue that wait off its thread (SETLKW), so that the queue can end them all when it
/// stops: a ring stop or a device reset answers every request the ring handed out before the front-end hears
/// the ring has stopped, and a lock wait would otherwise hold that answer for as long as the lock is held.
///
/// Every session of a queue (its own, and its pool threads') shares one. Once `cancelAll` has run it stays
/// cancelled: a wait that starts afterwards ends at once with EINTR.
public final class DeferredWork: Sendable {
    private struct State {
        var stopping = false
        var waits: [ObjectIdentifier: CancellableWait] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    /// Adds a wait; false when the queue is stopping (the wait must not start).
    func register(_ wait: CancellableWait) -> Bool {
        state.withLock { state in
            guard !state.stopping else { return false }
            state.waits[ObjectIdentifier(wait)] = wait
            return true
        }
    }

    func unregister(_ wait: CancellableWait) {
        _ = state.withLock { $0.waits.removeValue(forKey: ObjectIdentifier(wait)) }
    }

    /// Ends every wait now and any that would start later: each fails with EINTR, as an interrupted wait does.
    /// Returns once every waiting thread has left its blocking call.
    public func cancelAll() {
        let waits = state.withLock { state in
            state.stopping = true
            return Array(state.waits.values)
        }
        for wait in waits { wait.cancel() }
    }

    /// How many waits are in progress (tests).
    public var count: Int { state.withLock { $0.waits.count } }
}

/// The lock waits of the whole server: a ceiling on how many run at once (each has a thread), and the index
/// by request id that INTERRUPT uses.
final class LockWaits: Sendable {
    private struct State {
        var count = 0
        var byUnique: [UInt64: [CancellableWait]] = [:]
    }

    private let state = Mutex(State())
    let limit: Int
    /// Set the first time the ceiling refuses a wait: one log line, not one per request.
    let ceilingReported = OneTimeFlag()

    init(limit: Int) { self.limit = limit }

    /// Counts a new wait for request `unique`; false at the ceiling.
    func begin(_ wait: CancellableWait, unique: UInt64) -> Bool {
        state.withLock { state in
            guard state.count < limit else { return false }
            state.count += 1
            state.byUnique[unique, default: []].append(wait)
            return true
        }
    }

    func end(_ wait: CancellableWait, unique: UInt64) {
        state.withLock { state in
            state.count -= 1
            guard var list = state.byUnique[unique] else { return }
            list.removeAll { $0 === wait }
            state.byUnique[unique] = list.isEmpty ? nil : list
        }
    }

    /// INTERRUPT: ends the waits of request `unique` with EINTR (a guest may reuse an id: all of them).
    func interrupt(_ unique: UInt64) {
        let waits = state.withLock { $0.byUnique[unique] ?? [] }
        for wait in waits { wait.cancel() }
    }

    /// Waits running now.
    var count: Int { state.withLock { $0.count } }
}

/// The guest's reply buffers of a request finished after its handler returned, and what keeps them valid: the
/// guest memory they point into stays mapped until this is gone, even if the front-end replaced the memory
/// table meanwhile.
// SAFETY: Holds `owner`, which keeps the memory `writable` points into mapped until the reply is written.
@safe
final class DeferredReply: @unchecked Sendable {
    let writable: [iovec]
    /// Keeps `writable` mapped (the transport's guest memory map).
    let owner: AnyObject?
    let unique: UInt64

    init(writable: UnsafeMutableBufferPointer<iovec>, owner: Unmanaged<AnyObject>?, unique: UInt64) {
        // SAFETY: the iovecs are copied; `owner` keeps the memory they point into mapped for as long as this lives.
        unsafe self.writable = unsafe Array(writable)
        // Retained here: from now on this reply keeps the memory mapped, whatever the caller does.
        self.owner = unsafe owner?.takeUnretainedValue()
        self.unique = unique
    }

    /// Writes a header-only reply with `error` (nil: success); returns the bytes written.
    func finish(error: Errno?) -> UInt32 {
        // SAFETY: writes a 16-byte header through WriteCursor, bounded by the buffers' lengths, into memory `owner`
        // keeps mapped.
        var copy = unsafe writable
        return unsafe copy.withUnsafeMutableBufferPointer { vectors in
            unsafe UInt32(FUSEReply.writeHeader(into: vectors, length: FUSEReply.headerSize, error: error, unique: unique).written)
        }
    }
}
