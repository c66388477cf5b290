// SPDX-License-Identifier: Apache-2.0

import Virtqueue

/// What a device implements to be served over vhost-user; the generic protocol work is `VhostUserHandler`'s.
public protocol VhostUserBackend: AnyObject, Sendable {
    /// The most queues the device can have (GET_QUEUE_NUM).
    var maxQueues: Int { get }
    /// The largest queue size accepted (SET_VRING_NUM).
    var maxQueueSize: Int { get }
    /// Device-specific virtio feature bits, added to the generic ones.
    var deviceFeatures: UInt64 { get }
    /// Makes the object that serves the requests of queue `index`. It is used by that queue's worker thread only.
    func makeRequestHandler(queue index: Int) -> any VringRequestHandler
    /// Every queue has stopped and the front-end reset the device, or went away.
    func reset()
}

/// Serves the descriptor chains of one queue, on that queue's worker thread.
public protocol VringRequestHandler: AnyObject {
    /// Handles one request and returns the number of bytes written to the chain's writable buffers.
    func handle(_ chain: DescriptorChain) -> UInt32
}
