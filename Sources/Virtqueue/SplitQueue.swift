// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import GuestMemory

/// A split virtqueue (virtio 1.2 §2.7), served from the device side.
///
/// The ring memory belongs to the guest and can change under us at any time: every descriptor is copied out
/// once, every address is translated with bounds checks, and chains are cut at the queue size, so a hostile
/// guest can make a request fail but cannot make us read outside its memory or loop for ever.
/// One worker thread owns a `SplitQueue`; it is not shared.
// SAFETY: The ring pointers are translations into `memory`, which the queue holds; every guest-given index and address
// is checked before use.
@safe
public struct SplitQueue {
    /// Flags of a descriptor (virtio 1.2 §2.7.5).
    static let descriptorNext: UInt16 = 1
    static let descriptorWrite: UInt16 = 2
    static let descriptorIndirect: UInt16 = 4
    /// `avail.flags`: the driver does not want interrupts (when EVENT_IDX is off).
    static let availableNoInterrupt: UInt16 = 1

    /// Size of one descriptor in bytes.
    static let descriptorSize = 16

    /// Number of descriptors; a power of two up to 32768.
    public let size: UInt16
    /// Whether VIRTIO_F_RING_EVENT_IDX was negotiated.
    public let eventIndex: Bool
    /// The guest memory the ring and the buffers live in.
    public private(set) var memory: GuestMemoryMap

    let descriptors: UnsafeMutableRawPointer
    let available: UnsafeMutableRawPointer
    let used: UnsafeMutableRawPointer

    /// The next available-ring slot to consume (`last_avail_idx`).
    public private(set) var nextAvailable: UInt16
    /// The next used-ring slot to fill.
    public private(set) var nextUsed: UInt16
    /// `used.idx` at the last time we decided whether to signal (EVENT_IDX), nil before the first time.
    var signalledUsed: UInt16?
    /// The dirty-page log while the front-end migrates the guest (VHOST_F_LOG_ALL): every reply written into
    /// the guest's buffers is marked in it; nil otherwise.
    public private(set) var log: DirtyLog?
    /// The guest address the used ring is logged at (VHOST_VRING_F_LOG), when it is.
    public private(set) var usedLogAddress: UInt64?
    /// Whether `log` is set: tested on every completion instead of binding the optional, which costs a
    /// retain and a release of the log per request.
    var isLogging = false

    /// Byte sizes of the three parts of a split ring of `size` entries.
    public static func ringSizes(size: UInt16) -> (descriptors: UInt64, available: UInt64, used: UInt64) {
        let n = UInt64(size)
        return (n * 16, 4 + 2 * n + 2, 4 + 8 * n + 2)
    }

    /// A queue over rings at the given front-end virtual addresses (SET_VRING_ADDR).
    /// - Throws: `VirtqueueError.ringNotInMemory` when any part of the rings is outside guest memory.
    public init(
        size: UInt16, descriptorsAt: UInt64, availableAt: UInt64, usedAt: UInt64, memory: GuestMemoryMap,
        eventIndex: Bool, nextAvailable: UInt16, userAddresses: Bool = true
    ) throws(VirtqueueError) {
        guard size > 0, size & (size &- 1) == 0 else { throw .ringNotInMemory }
        let sizes = Self.ringSizes(size: size)
        func translate(_ address: UInt64, _ length: UInt64) -> UnsafeMutableRawPointer? {
            unsafe memory.ringPart(at: address, length: length, userAddresses: userAddresses)
        }
        guard let descriptors = unsafe translate(descriptorsAt, sizes.descriptors),
              let available = unsafe translate(availableAt, sizes.available),
              let used = unsafe translate(usedAt, sizes.used)
        else { throw .ringNotInMemory }
        self.size = size
        self.eventIndex = eventIndex
        self.memory = memory
        unsafe self.descriptors = unsafe descriptors
        unsafe self.available = unsafe available
        unsafe self.used = unsafe used
        self.nextAvailable = nextAvailable
        // The used index continues from wherever the guest left it (a ring restarted after GET_VRING_BASE).
        self.nextUsed = unsafe cvfs_load_acquire_u16(used + 2)
    }

    // MARK: Ring fields

    @inline(__always) var availableIndex: UInt16 { unsafe cvfs_load_acquire_u16(available + 2) }
    @inline(__always) var availableFlags: UInt16 { unsafe cvfs_load_relaxed_u16(available) }
    @inline(__always) var usedEvent: UInt16 { unsafe cvfs_load_relaxed_u16(available + 4 + 2 * Int(size)) }

    @inline(__always) func setAvailableEvent(_ value: UInt16) {
        // SAFETY: avail_event is inside the used ring, translated whole at init.
        unsafe cvfs_store_relaxed_u16(used + 4 + 8 * Int(size), value)
        if isLogging, let log, let usedLogAddress { log.mark(usedLogAddress &+ 4 &+ 8 &* UInt64(size), length: 2) }
    }

    /// Starts or stops logging: `log` for the reply buffers, and the used ring at `usedAt` too when given.
    public mutating func setLogging(_ log: DirtyLog?, usedAt: UInt64?) {
        self.log = log
        isLogging = log != nil
        usedLogAddress = log == nil ? nil : usedAt
    }

    /// Whether the guest has made buffers available that we have not consumed.
    public var hasAvailable: Bool { availableIndex != nextAvailable }

    // MARK: Consuming chains

    /// Takes the next available chain into `chain`.
    ///
    /// - Returns: false when the ring is empty.
    /// - Throws: `.invalidChain` for a malformed chain, which the caller must still return to the guest with
    ///   `complete(head:length: 0)`; `.availableIndexOutOfRange` or `.headOutOfRange` when the ring itself is
    ///   broken, after which the queue must not be used again.
    public mutating func pop(into chain: DescriptorChain) throws(VirtqueueError) -> Bool {
        // SAFETY: the slot is masked to the ring's size, inside the available ring translated at init.
        let availableIndex = self.availableIndex
        if availableIndex == nextAvailable { return false }
        if availableIndex &- nextAvailable > size {
            throw .availableIndexOutOfRange(available: availableIndex, next: nextAvailable)
        }
        let slot = Int(nextAvailable & (size &- 1))
        let head = unsafe UInt16(littleEndian: cvfs_load_relaxed_u16(available + 4 + 2 * slot))
        nextAvailable &+= 1
        guard head < size else { throw .headOutOfRange(head) }
        chain.reset(head: head)
        // Set once per memory table, not per request: an identity check is all a request pays.
        if unsafe chain.memory !== memory { unsafe chain.memory = memory }
        if let fault = walk(head: head, into: chain) {
            throw .invalidChain(head: head, reason: fault)
        }
        return true
    }

    /// A descriptor copied out of guest memory.
    struct Descriptor {
        var address: UInt64
        var length: UInt32
        var flags: UInt16
        var next: UInt16

        @inline(__always)
        init(table: UnsafeRawPointer, index: Int) {
            // SAFETY: callers pass an index below the table's size, checked in walk.
            let p = unsafe table + index * SplitQueue.descriptorSize
            address = unsafe UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
            length = unsafe UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            flags = unsafe UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
            next = unsafe UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
        }
    }

    /// Follows the chain from `head` (virtio 1.2 §2.7.5.3) and records its buffers; returns a fault or nil.
    func walk(head: UInt16, into chain: DescriptorChain) -> ChainFault? {
        // SAFETY: indexes are checked against the table's size and every buffer is translated whole before it is kept.
        var table = unsafe UnsafeRawPointer(descriptors)
        var tableSize = Int(size)
        var index = Int(head)
        var ttl = Int(size)
        var inIndirect = false
        var seenWritable = false
        while true {
            guard ttl > 0 else { return .tooLong }
            ttl -= 1
            let descriptor = unsafe Descriptor(table: table, index: index)
            if descriptor.flags & Self.descriptorIndirect != 0 {
                if inIndirect { return .nestedIndirect }
                if descriptor.flags & Self.descriptorNext != 0 { return .indirectWithNext }
                let length = UInt64(descriptor.length)
                guard length > 0, length % UInt64(Self.descriptorSize) == 0,
                      length / UInt64(Self.descriptorSize) <= 32768
                else { return .badIndirectLength }
                guard let indirect = unsafe memory.translate(GuestAddress(descriptor.address), length: length) else {
                    return .bufferNotInMemory
                }
                unsafe table = UnsafeRawPointer(indirect)
                tableSize = Int(length) / Self.descriptorSize
                ttl = tableSize
                index = 0
                inIndirect = true
                continue
            }
            let isWritable = descriptor.flags & Self.descriptorWrite != 0
            if isWritable {
                seenWritable = true
            } else if seenWritable {
                return .readableAfterWritable
            }
            if descriptor.length > 0 {
                guard let host = unsafe memory.translate(GuestAddress(descriptor.address), length: UInt64(descriptor.length))
                else { return .bufferNotInMemory }
                guard unsafe chain.append(host, length: descriptor.length, writable: isWritable) else { return .tooManySegments }
                if unsafe chain.readableLength > UInt64(UInt32.max) || chain.writableLength > UInt64(UInt32.max) {
                    return .lengthOverflow
                }
            }
            guard descriptor.flags & Self.descriptorNext != 0 else { return nil }
            guard Int(descriptor.next) < tableSize else { return .nextOutOfRange }
            index = Int(descriptor.next)
        }
    }

    // MARK: Returning chains

    /// Puts `head` into the used ring with `length` bytes written and publishes it (release ordering).
    public mutating func complete(head: UInt16, length: UInt32) {
        // SAFETY: the slot is masked to the ring's size, inside the used ring translated at init.
        // While migrating, the reply's bytes are marked before the guest can see them used.
        if isLogging { logCompletion(head: head, length: length, slot: Int(nextUsed & (size &- 1)), published: false) }
        let slot = Int(nextUsed & (size &- 1))
        let element = unsafe used + 4 + 8 * slot
        unsafe element.storeBytes(of: UInt32(head).littleEndian, as: UInt32.self)
        unsafe (element + 4).storeBytes(of: length.littleEndian, as: UInt32.self)
        nextUsed &+= 1
        unsafe cvfs_store_release_u16(used + 2, nextUsed.littleEndian)
        if isLogging { logCompletion(head: head, length: length, slot: slot, published: true) }
    }

    /// Marks a completion in the log: the reply's bytes before it is published, the used element and index after.
    @inline(never)
    func logCompletion(head: UInt16, length: UInt32, slot: Int, published: Bool) {
        guard let log else { return }
        if !published {
            if length > 0 { logWritten(head: head, length: length, in: log) }
        } else if let usedLogAddress {
            log.mark(usedLogAddress &+ 4 &+ 8 &* UInt64(slot), length: 8)
            log.mark(usedLogAddress &+ 2, length: 2)
        }
    }

    /// Marks in `log` the guest pages of the first `length` bytes of the chain's writable buffers: what a reply
    /// wrote (virtio 1.2 §2.7.8: the used length counts bytes written from the start of the writable part).
    /// The chain is walked again from the ring, as a deferred request no longer has its buffers at hand; the
    /// walk has the same bounds as `walk`, and stops at anything malformed.
    func logWritten(head: UInt16, length: UInt32, in log: DirtyLog) {
        // SAFETY: indexes are checked against the table's size; an indirect table is translated whole first.
        guard head < size else { return }
        var table = unsafe UnsafeRawPointer(descriptors)
        var tableSize = Int(size)
        var index = Int(head)
        var ttl = Int(size)
        var remaining = UInt64(length)
        var inIndirect = false
        while ttl > 0 && remaining > 0 {
            ttl -= 1
            let descriptor = unsafe Descriptor(table: table, index: index)
            if descriptor.flags & Self.descriptorIndirect != 0 {
                let bytes = UInt64(descriptor.length)
                guard !inIndirect, bytes > 0, bytes % UInt64(Self.descriptorSize) == 0, bytes / 16 <= 32768,
                      let indirect = unsafe memory.translate(GuestAddress(descriptor.address), length: bytes)
                else { return }
                unsafe table = UnsafeRawPointer(indirect)
                tableSize = Int(bytes) / Self.descriptorSize
                ttl = tableSize
                index = 0
                inIndirect = true
                continue
            }
            if descriptor.flags & Self.descriptorWrite != 0 {
                let written = min(remaining, UInt64(descriptor.length))
                log.mark(descriptor.address, length: written)
                remaining -= written
            }
            guard descriptor.flags & Self.descriptorNext != 0, Int(descriptor.next) < tableSize else { return }
            index = Int(descriptor.next)
        }
    }

    /// Whether the guest wants an interrupt for the chains completed since the last call (virtio 1.2 §2.7.10).
    public mutating func needsNotification() -> Bool {
        // Our used.idx store must be visible before we read the guest's used_event or flags.
        cvfs_fence_seq_cst()
        guard eventIndex else {
            return availableFlags & Self.availableNoInterrupt == 0
        }
        let new = nextUsed
        let old = signalledUsed
        signalledUsed = new
        guard let old else { return true }
        let event = usedEvent
        return new &- event &- 1 < new &- old
    }

    /// Tells the guest to kick us for the next buffer and returns whether buffers arrived meanwhile, in which
    /// case the caller must keep going rather than wait (virtio 1.2 §2.7.10.1).
    public func enableNotification() -> Bool {
        if eventIndex {
            setAvailableEvent(nextAvailable.littleEndian)
        }
        cvfs_fence_seq_cst()
        return availableIndex != nextAvailable
    }

    /// Replaces the memory map (after the front-end changed the memory table) keeping the ring position.
    public mutating func updateMemory(
        _ memory: GuestMemoryMap, descriptorsAt: UInt64, availableAt: UInt64, usedAt: UInt64
    ) throws(VirtqueueError) {
        let next = nextAvailable
        let nextUsed = self.nextUsed
        let signalled = signalledUsed
        let (log, usedLogAddress) = (self.log, self.usedLogAddress)
        self = try SplitQueue(
            size: size, descriptorsAt: descriptorsAt, availableAt: availableAt, usedAt: usedAt, memory: memory,
            eventIndex: eventIndex, nextAvailable: next)
        self.nextUsed = nextUsed
        self.signalledUsed = signalled
        self.log = log
        self.isLogging = log != nil
        self.usedLogAddress = usedLogAddress
    }
}
