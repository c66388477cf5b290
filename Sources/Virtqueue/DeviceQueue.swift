// SPDX-License-Identifier: Apache-2.0

import GuestMemory

/// What a queue worker needs of a virtqueue, split (`SplitQueue`) or packed (`PackedQueue`). The worker is
/// generic over it, so each layout gets its own specialised request loop with direct calls.
///
/// A chain's `head` is the token its completion gives back: the descriptor index of the head for a split
/// ring, the ring position the chain started at for a packed one. Either way it is below `size` and unique
/// among the chains in flight of a driver that follows the spec.
public protocol DeviceQueue {
    /// Number of descriptors.
    var size: UInt16 { get }
    /// The guest memory the ring and the buffers live in.
    var memory: GuestMemoryMap { get }
    /// Where the queue stands, as GET_VRING_BASE reports it and SET_VRING_BASE takes it (vhost-user.rst,
    /// "vring descriptor indices"): the next available index for a split ring; avail index and wrap counter,
    /// used index and wrap counter for a packed one.
    var ringState: UInt32 { get }
    /// Takes the next available chain into `chain`; false when there is none.
    /// - Throws: `.invalidChain` for a malformed chain (complete it with length 0); any other error: the ring
    ///   is broken and must not be used again.
    mutating func pop(into chain: DescriptorChain) throws(VirtqueueError) -> Bool
    /// Returns the chain `head` to the driver with `length` bytes written.
    mutating func complete(head: UInt16, length: UInt32)
    /// Whether the driver wants an interrupt for the chains completed since the last call.
    mutating func needsNotification() -> Bool
    /// Asks the driver to kick for the next chain; whether chains arrived meanwhile (keep serving if so).
    func enableNotification() -> Bool
    /// Starts or stops dirty-page logging: every reply's bytes, and the ring's device-written parts when
    /// `usedAt` (VHOST_VRING_F_LOG's address) is given.
    mutating func setLogging(_ log: DirtyLog?, usedAt: UInt64?)
    /// Takes up a new memory table, keeping the queue's position.
    mutating func updateMemory(_ memory: GuestMemoryMap, descriptorsAt: UInt64, availableAt: UInt64, usedAt: UInt64)
        throws(VirtqueueError)
}

extension SplitQueue: DeviceQueue {
    /// The next available index; bits 16-31 are zero.
    public var ringState: UInt32 { UInt32(nextAvailable) }
}

extension GuestMemoryMap {
    /// A ring part of `length` bytes at a front-end virtual address (SET_VRING_ADDR), or at a guest address
    /// (tests, fuzzing): translated whole, bounds-checked; nil when it is not inside one region.
    func ringPart(at address: UInt64, length: UInt64, userAddresses: Bool) -> UnsafeMutableRawPointer? {
        // SAFETY: both translations are bounds-checked over the whole part, into memory this map holds.
        unsafe userAddresses
            ? translate(userAddress: address, length: length)
            : translate(GuestAddress(address), length: length)
    }
}
