// SPDX-License-Identifier: Apache-2.0

import Synchronization
import VFSSystem
import Virtqueue

/// What a device implements to be served over vhost-user; the generic protocol work is `VhostUserHandler`'s.
public protocol VhostUserBackend: AnyObject, Sendable {
    /// The most queues the device can have (GET_QUEUE_NUM).
    var maxQueues: Int { get }
    /// The largest queue size accepted (SET_VRING_NUM).
    var maxQueueSize: Int { get }
    /// Device-specific virtio feature bits, added to the generic ones.
    var deviceFeatures: UInt64 { get }
    /// Makes the object that serves the requests of queue `index`. It is used by that queue's worker thread only;
    /// requests it defers are finished later through `completions`, from any thread.
    func makeRequestHandler(queue index: Int, completions: DeferredCompletions) -> any VringRequestHandler
    /// Every queue has stopped and the front-end reset the device, or went away.
    func reset()
}

/// Serves the descriptor chains of one queue, on that queue's worker thread.
public protocol VringRequestHandler: AnyObject {
    /// Handles one request and returns the number of bytes written to the chain's writable buffers, or nil when
    /// the request goes on elsewhere (a lock wait) and will be finished with `DeferredCompletions.complete`.
    /// A deferred request's buffers stay the guest's until then; the chain object itself is reused at once.
    func handle(_ chain: DescriptorChain) -> UInt32?
}

/// Requests finished after their handler returned: any thread posts them, the queue's worker publishes them
/// in the used ring (the only thread that writes it) and signals the guest.
public final class DeferredCompletions: Sendable {
    let pending = Mutex<[(head: UInt16, length: UInt32)]>([])
    let wake: CInt

    init(wake: CInt) { self.wake = wake }

    /// Finishes the request whose chain started at `head`, with `length` bytes written into its buffers.
    public func complete(head: UInt16, length: UInt32) {
        pending.withLock { $0.append((head, length)) }
        EventFD.signal(FileDescriptor(rawValue: wake))
    }

    func take() -> [(head: UInt16, length: UInt32)] {
        pending.withLock { pending in
            if pending.isEmpty { return [] }
            defer { pending.removeAll(keepingCapacity: true) }
            return pending
        }
    }
}
