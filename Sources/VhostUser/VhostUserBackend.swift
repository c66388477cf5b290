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
    /// The device's virtio config space, for a front-end that asks the back-end for it (GET_CONFIG); nil: the
    /// front-end keeps its own, and VHOST_USER_PROTOCOL_F_CONFIG is not offered.
    var configSpace: [UInt8]? { get }
    /// The device's internal state for a live migration; nil: it has none to move, and
    /// VHOST_USER_PROTOCOL_F_DEVICE_STATE is not offered.
    var deviceState: (any DeviceStateTransfer)? { get }
}

extension VhostUserBackend {
    public var configSpace: [UInt8]? { nil }
    public var deviceState: (any DeviceStateTransfer)? { nil }
}

/// Serves the descriptor chains of one queue, on that queue's worker thread.
public protocol VringRequestHandler: AnyObject {
    /// Handles one request and returns the number of bytes written to the chain's writable buffers, or nil when
    /// the request goes on elsewhere (a lock wait, a pool thread) and will be finished with
    /// `DeferredCompletions.complete`. A deferred request keeps its buffers' memory alive (`chain.memory`);
    /// the chain object itself is reused at once.
    func handle(_ chain: DescriptorChain) -> UInt32?
    /// The ring is stopping: make every deferred request finish soon (lock waits end with EINTR, pool jobs run
    /// to their end) and let none wait from now on. The worker then waits for their completions, publishes
    /// them, and only then tells the front-end the ring has stopped.
    func stopDeferred()
}

extension VringRequestHandler {
    public func stopDeferred() {}
}

/// Requests finished after their handler returned: any thread posts them, the queue's worker publishes them
/// in the used ring (the only thread that writes it) and signals the guest.
///
/// Whoever finishes a deferred request holds a reference to this object, and through it to the eventfd that
/// wakes the worker: never a bare descriptor number that the worker could close and the process reuse.
public final class DeferredCompletions: Sendable {
    private let pending = Mutex<[(head: UInt16, length: UInt32)]>([])
    /// Wakes the worker when a completion is posted.
    let wake: SharedEventFD

    init() throws(Errno) { wake = try SharedEventFD() }

    /// Finishes the request whose chain started at `head`, with `length` bytes written into its buffers.
    public func complete(head: UInt16, length: UInt32) {
        pending.withLock { $0.append((head, length)) }
        wake.signal()
    }

    /// Takes every completion posted so far into `into` (emptied first), without allocating in the common case.
    func take(into taken: inout [(head: UInt16, length: UInt32)]) {
        taken.removeAll(keepingCapacity: true)
        pending.withLock { pending in
            if pending.isEmpty { return }
            swap(&pending, &taken)
        }
    }
}
