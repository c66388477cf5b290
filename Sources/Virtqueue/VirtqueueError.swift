// SPDX-License-Identifier: Apache-2.0

/// What can be wrong with a ring or a descriptor chain the guest wrote.
public enum VirtqueueError: Error, Equatable, Sendable {
    /// The ring addresses do not translate to guest memory.
    case ringNotInMemory
    /// `avail.idx` moved more than the queue size past what we consumed (virtio 1.2 §2.7.6).
    case availableIndexOutOfRange(available: UInt16, next: UInt16)
    /// A head index in the available ring is not a descriptor index.
    case headOutOfRange(UInt16)
    /// A packed ring's SET_VRING_BASE state names a position past the ring.
    case ringStateOutOfRange(UInt32)
    /// The chain starting at `head` is malformed; `reason` says how. The head is still returned to the guest.
    case invalidChain(head: UInt16, reason: ChainFault)
}

/// Why a descriptor chain was rejected.
public enum ChainFault: Equatable, Sendable {
    case nextOutOfRange
    case tooLong
    case bufferNotInMemory
    case readableAfterWritable
    case nestedIndirect
    case indirectWithNext
    case badIndirectLength
    case tooManySegments
    case lengthOverflow
}
