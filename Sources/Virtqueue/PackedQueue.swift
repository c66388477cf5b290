// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import GuestMemory

/// A packed virtqueue (virtio 1.2 §2.8, VIRTIO_F_RING_PACKED), served from the device side.
///
/// One ring of `size` descriptors that both sides write: the driver makes a chain available by setting the
/// AVAIL and USED flag bits of its head to its wrap counter and its negation, the device returns a chain by
/// writing one used descriptor (buffer id, bytes written, both bits equal to its own wrap counter) at its next
/// used position, then skipping as many positions as the chain had descriptors. Two 4-byte event suppression
/// structures replace avail.flags/used_event and used.flags/avail_event: the driver's (at the "available"
/// address of SET_VRING_ADDR) says when it wants interrupts, ours (at the "used" address) when we want kicks.
///
/// As for the split ring, the guest can change the ring under us at any time: every descriptor is copied out
/// once, every buffer translated with bounds checks, chains are cut at the queue size. What the device needs
/// later (a chain's buffer id and length in positions, to complete it; its descriptors, to log its reply while
/// migrating) is kept on our side, per start position, because used descriptors written for other chains may
/// overwrite the ring slots of a chain still in flight.
// SAFETY: The ring pointers are translations into `memory`, which the queue holds; positions are kept below `size`
// and every guest-given address is checked before use.
@safe
public struct PackedQueue {
    /// Descriptor flags (virtio 1.2 §2.8.1, §2.8.6, §2.8.8).
    static let descriptorNext = UInt16(VRING_DESC_F_NEXT)
    static let descriptorWrite = UInt16(VRING_DESC_F_WRITE)
    static let descriptorIndirect = UInt16(VRING_DESC_F_INDIRECT)
    static let descriptorAvailable = UInt16(1) << UInt16(VRING_PACKED_DESC_F_AVAIL)
    static let descriptorUsed = UInt16(1) << UInt16(VRING_PACKED_DESC_F_USED)
    /// Event suppression flags (§2.8.10).
    static let eventEnable = UInt32(VRING_PACKED_EVENT_FLAG_ENABLE)
    static let eventDisable = UInt32(VRING_PACKED_EVENT_FLAG_DISABLE)
    static let eventDescriptor = UInt32(VRING_PACKED_EVENT_FLAG_DESC)
    static let wrapBit = UInt16(1) << UInt16(VRING_PACKED_EVENT_F_WRAP_CTR)

    /// Layout of a packed descriptor: le64 addr, le32 len, le16 id, le16 flags.
    static let descriptorSize = 16
    static let lengthOffset = 8
    static let idOffset = 12
    static let flagsOffset = 14

    /// Number of descriptors: 1 to 32768, not necessarily a power of two.
    public let size: UInt16
    /// Whether VIRTIO_F_RING_EVENT_IDX was negotiated (event suppression by position).
    public let eventIndex: Bool
    public private(set) var memory: GuestMemoryMap

    let ring: UnsafeMutableRawPointer
    /// The driver's event suppression structure (read) and ours (written).
    let driverEvent: UnsafeMutableRawPointer
    let deviceEvent: UnsafeMutableRawPointer
    /// Guest addresses of the ring and of our event structure, where the dirty log marks what we write there
    /// (nil if not inside one region, as only a broken front-end gives).
    let ringGuestAddress: UInt64?
    let deviceEventGuestAddress: UInt64?

    /// The next position to look at for an available chain, and the wrap counter it must carry.
    public private(set) var nextAvailable: UInt16
    public private(set) var availableWrap: Bool
    /// The next position to write a used descriptor at, and our wrap counter.
    public private(set) var nextUsed: UInt16
    public private(set) var usedWrap: Bool
    /// Positions used so far (wrapping), and that count at the last decision to notify (EVENT_IDX).
    var usedCount: UInt16 = 0
    var signalledCount: UInt16?
    /// What is kept of the chains in flight.
    let chains: PackedChains

    public private(set) var log: DirtyLog?
    /// Whether the ring and our event structure are logged too (VHOST_VRING_F_LOG; only while `log` is set).
    var logsRing = false
    var isLogging = false

    /// Byte sizes of the descriptor ring and of each event suppression structure.
    public static func ringSizes(size: UInt16) -> (descriptors: UInt64, event: UInt64) {
        (UInt64(size) * 16, 4)
    }

    /// A queue over the ring and event structures at the given front-end virtual addresses (SET_VRING_ADDR:
    /// descriptors, then the driver area as "available", the device area as "used"), continuing from `state`
    /// (SET_VRING_BASE).
    /// - Throws: `.ringNotInMemory` when a part is outside guest memory; `.ringStateOutOfRange` when a
    ///   position in `state` is not below `size`.
    public init(
        size: UInt16, descriptorsAt: UInt64, driverEventAt: UInt64, deviceEventAt: UInt64, memory: GuestMemoryMap,
        eventIndex: Bool, state: UInt32, userAddresses: Bool = true
    ) throws(VirtqueueError) {
        try self.init(
            size: size, descriptorsAt: descriptorsAt, driverEventAt: driverEventAt, deviceEventAt: deviceEventAt,
            memory: memory, eventIndex: eventIndex, state: state, userAddresses: userAddresses,
            chains: nil)
    }

    init(
        size: UInt16, descriptorsAt: UInt64, driverEventAt: UInt64, deviceEventAt: UInt64, memory: GuestMemoryMap,
        eventIndex: Bool, state: UInt32, userAddresses: Bool, chains: PackedChains?
    ) throws(VirtqueueError) {
        guard size > 0, size <= 32768 else { throw .ringNotInMemory }
        let sizes = Self.ringSizes(size: size)
        func translate(_ address: UInt64, _ length: UInt64) -> UnsafeMutableRawPointer? {
            unsafe memory.ringPart(at: address, length: length, userAddresses: userAddresses)
        }
        guard let ring = unsafe translate(descriptorsAt, sizes.descriptors),
              let driverEvent = unsafe translate(driverEventAt, sizes.event),
              let deviceEvent = unsafe translate(deviceEventAt, sizes.event)
        else { throw .ringNotInMemory }
        let available = UInt16(truncatingIfNeeded: state) & ~Self.wrapBit
        let used = UInt16(truncatingIfNeeded: state >> 16) & ~Self.wrapBit
        guard available < size, used < size else { throw .ringStateOutOfRange(state) }
        self.size = size
        self.eventIndex = eventIndex
        self.memory = memory
        unsafe self.ring = unsafe ring
        unsafe self.driverEvent = unsafe driverEvent
        unsafe self.deviceEvent = unsafe deviceEvent
        func guestAddress(_ address: UInt64) -> UInt64? {
            userAddresses ? memory.guestAddress(ofUserAddress: address)?.rawValue : address
        }
        ringGuestAddress = guestAddress(descriptorsAt)
        deviceEventGuestAddress = guestAddress(deviceEventAt)
        nextAvailable = available
        availableWrap = state & UInt32(Self.wrapBit) != 0
        nextUsed = used
        usedWrap = state & (UInt32(Self.wrapBit) << 16) != 0
        self.chains = chains ?? PackedChains(size: size)
    }

    /// Avail index and wrap counter in bits 0-15, used index and wrap counter in bits 16-31.
    public var ringState: UInt32 {
        UInt32(nextAvailable | (availableWrap ? Self.wrapBit : 0))
            | UInt32(nextUsed | (usedWrap ? Self.wrapBit : 0)) << 16
    }

    // MARK: Ring fields

    @inline(__always) func flags(at position: UInt16) -> UInt16 {
        // SAFETY: callers pass a position below size, inside the ring translated at init.
        unsafe UInt16(littleEndian: cvfs_load_acquire_u16(ring + Int(position) * Self.descriptorSize + Self.flagsOffset))
    }

    /// Whether the descriptor at `position` is available in the lap of wrap counter `wrap` (§2.8.1): its AVAIL
    /// bit equals the counter and its USED bit does not.
    @inline(__always) func isAvailable(_ flags: UInt16, wrap: Bool) -> Bool {
        (flags & Self.descriptorAvailable != 0) == wrap && (flags & Self.descriptorUsed != 0) != wrap
    }

    /// Whether the driver has made a chain available that we have not consumed.
    public var hasAvailable: Bool { isAvailable(flags(at: nextAvailable), wrap: availableWrap) }

    // MARK: Consuming chains

    /// Takes the next available chain into `chain`; its `head` is the position it starts at.
    ///
    /// A chain is the run of descriptors up to the first without NEXT; its buffer id is in that last one
    /// (§2.8.6), or in the indirect descriptor (§2.8.8). A chain that never ends takes the whole ring and is
    /// malformed. The descriptors after the head are not checked for availability (the driver flips the
    /// head last), as QEMU's device side does not either.
    /// - Returns: false when no chain is available.
    /// - Throws: `.invalidChain` for a malformed chain, which must still be completed with length 0: its
    ///   positions are consumed, so the driver gets it back and the positions stay in step.
    public mutating func pop(into chain: DescriptorChain) throws(VirtqueueError) -> Bool {
        // SAFETY: positions stay below size; descriptors are copied out of the ring, translated at init.
        let start = nextAvailable
        guard isAvailable(flags(at: start), wrap: availableWrap) else { return false }
        chain.reset(head: start)
        if unsafe chain.memory !== memory { unsafe chain.memory = memory }
        var position = start
        var wrap = availableWrap
        var count: UInt16 = 0
        var fault: ChainFault?
        var seenWritable = false
        var id: UInt16 = 0
        let inFlight = unsafe chains.lengths[Int(start)] != 0
        while true {
            guard count < size else {
                fault = fault ?? .tooLong
                break
            }
            let descriptor = unsafe Descriptor(ring: ring, position: position)
            // Kept for logging the reply later; not over a chain in flight (only a broken driver reuses it).
            if !inFlight { unsafe descriptor.store(into: chains.shadow, position: position) }
            count += 1
            position += 1
            if position == size {
                position = 0
                wrap.toggle()
            }
            if fault == nil {
                if descriptor.flags & Self.descriptorIndirect == 0 {
                    fault = append(descriptor, to: chain, seenWritable: &seenWritable)
                } else {
                    fault = takeIndirect(descriptor, first: count == 1, into: chain, seenWritable: &seenWritable)
                }
            }
            if descriptor.flags & Self.descriptorNext == 0 {
                id = descriptor.id
                break
            }
        }
        nextAvailable = position
        availableWrap = wrap
        if !inFlight {
            unsafe chains.lengths[Int(start)] = count
            unsafe chains.ids[Int(start)] = id
        }
        if let fault { throw .invalidChain(head: start, reason: fault) }
        return true
    }

    /// A descriptor copied out of the ring or an indirect table.
    struct Descriptor {
        var address: UInt64
        var length: UInt32
        var id: UInt16
        var flags: UInt16

        @inline(__always)
        init(ring: UnsafeRawPointer, position: UInt16) {
            // SAFETY: callers pass a position below the table's size.
            let p = unsafe ring + Int(position) * PackedQueue.descriptorSize
            address = unsafe UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
            length = unsafe UInt32(littleEndian: p.loadUnaligned(fromByteOffset: PackedQueue.lengthOffset, as: UInt32.self))
            id = unsafe UInt16(littleEndian: p.loadUnaligned(fromByteOffset: PackedQueue.idOffset, as: UInt16.self))
            flags = unsafe UInt16(littleEndian: p.loadUnaligned(fromByteOffset: PackedQueue.flagsOffset, as: UInt16.self))
        }

        @inline(__always)
        func store(into table: UnsafeMutableRawPointer, position: UInt16) {
            // SAFETY: callers pass a position below the table's size.
            let p = unsafe table + Int(position) * PackedQueue.descriptorSize
            unsafe p.storeBytes(of: address, as: UInt64.self)
            unsafe p.storeBytes(of: length, toByteOffset: PackedQueue.lengthOffset, as: UInt32.self)
            unsafe p.storeBytes(of: id, toByteOffset: PackedQueue.idOffset, as: UInt16.self)
            unsafe p.storeBytes(of: flags, toByteOffset: PackedQueue.flagsOffset, as: UInt16.self)
        }
    }

    /// Records the buffers of an indirect descriptor's table; returns a fault or nil. Kept out of `pop`, whose
    /// common case is a direct chain.
    @inline(never)
    func takeIndirect(_ descriptor: Descriptor, first: Bool, into chain: DescriptorChain, seenWritable: inout Bool) -> ChainFault? {
        // SAFETY: the table is translated whole before its entries are read.
        // §2.8.8: an indirect descriptor is a chain of its own: neither NEXT with it nor after others.
        if descriptor.flags & Self.descriptorNext != 0 || !first { return .indirectWithNext }
        guard let table = unsafe indirectTable(descriptor) else {
            return descriptor.length % UInt32(Self.descriptorSize) == 0 && descriptor.length > 0
                ? .bufferNotInMemory : .badIndirectLength
        }
        // In the table only WRITE counts; NEXT, INDIRECT and the ids are ignored (§2.8.8): the entries follow
        // one another to the table's end.
        for index in unsafe 0..<table.count {
            let entry = unsafe Descriptor(ring: table.base, position: UInt16(truncatingIfNeeded: index))
            if let fault = append(entry, to: chain, seenWritable: &seenWritable) { return fault }
        }
        return nil
    }

    /// The indirect table of `descriptor`, translated whole, with its entry count; nil when its length is not a
    /// whole number of descriptors up to 32768 or it is not in guest memory.
    func indirectTable(_ descriptor: Descriptor) -> (base: UnsafeRawPointer, count: Int)? {
        // SAFETY: the table is translated whole, bounds-checked.
        let length = UInt64(descriptor.length)
        guard length > 0, length % UInt64(Self.descriptorSize) == 0, length / UInt64(Self.descriptorSize) <= 32768,
              let table = unsafe memory.translate(GuestAddress(descriptor.address), length: length)
        else { return nil }
        return (UnsafeRawPointer(table), Int(length) / Self.descriptorSize)
    }

    /// Records one buffer (WRITE decides its side); returns a fault or nil.
    @inline(__always)
    func append(_ descriptor: Descriptor, to chain: DescriptorChain, seenWritable: inout Bool) -> ChainFault? {
        // SAFETY: the buffer is translated whole before it is kept.
        let writable = descriptor.flags & Self.descriptorWrite != 0
        if writable {
            seenWritable = true
        } else if seenWritable {
            return .readableAfterWritable
        }
        guard descriptor.length > 0 else { return nil }
        guard let host = unsafe memory.translate(GuestAddress(descriptor.address), length: UInt64(descriptor.length))
        else { return .bufferNotInMemory }
        guard unsafe chain.append(host, length: descriptor.length, writable: writable) else { return .tooManySegments }
        if unsafe chain.readableLength > UInt64(UInt32.max) || chain.writableLength > UInt64(UInt32.max) {
            return .lengthOverflow
        }
        return nil
    }

    // MARK: Returning chains

    /// Writes the used descriptor of the chain that started at `head` (its buffer id, `length` bytes written,
    /// flags last with release ordering) and moves past as many positions as the chain had. A head that is not
    /// in flight is ignored.
    public mutating func complete(head: UInt16, length: UInt32) {
        // SAFETY: head and nextUsed are below size; the element is inside the ring translated at init.
        guard head < size else { return }
        let count = unsafe chains.lengths[Int(head)]
        guard count != 0 else { return }
        unsafe chains.lengths[Int(head)] = 0
        let id = unsafe chains.ids[Int(head)]
        if isLogging && length > 0 { logWritten(head: head, count: count, length: length) }
        let slot = nextUsed
        let element = unsafe ring + Int(slot) * Self.descriptorSize
        unsafe element.storeBytes(of: length.littleEndian, toByteOffset: Self.lengthOffset, as: UInt32.self)
        unsafe element.storeBytes(of: id.littleEndian, toByteOffset: Self.idOffset, as: UInt16.self)
        let flags = usedWrap ? Self.descriptorAvailable | Self.descriptorUsed : 0
        unsafe cvfs_store_release_u16(element + Self.flagsOffset, flags.littleEndian)
        let next = UInt32(slot) + UInt32(count)
        if next >= UInt32(size) {
            nextUsed = UInt16(next - UInt32(size))
            usedWrap.toggle()
        } else {
            nextUsed = UInt16(next)
        }
        usedCount &+= count
        if logsRing, let log, let ringGuestAddress { log.mark(ringGuestAddress &+ UInt64(slot) &* 16, length: 16) }
    }

    /// Marks in the log the guest pages of the first `length` bytes of the chain's writable buffers, from the
    /// copy of its descriptors taken when it was consumed (an indirect table is read again from guest memory,
    /// with the same bounds as `take`).
    @inline(never)
    func logWritten(head: UInt16, count: UInt16, length: UInt32) {
        // SAFETY: positions stay below size in the shadow table this queue owns.
        guard let log else { return }
        var remaining = UInt64(length)
        var position = head
        func mark(_ descriptor: Descriptor, writable: Bool) {
            guard writable, remaining > 0 else { return }
            let written = min(remaining, UInt64(descriptor.length))
            log.mark(descriptor.address, length: written)
            remaining -= written
        }
        for _ in 0..<count {
            let descriptor = unsafe Descriptor(ring: chains.shadow, position: position)
            if descriptor.flags & Self.descriptorIndirect != 0 {
                guard let table = unsafe indirectTable(descriptor) else { return }
                for index in unsafe 0..<table.count where remaining > 0 {
                    let entry = unsafe Descriptor(ring: table.base, position: UInt16(truncatingIfNeeded: index))
                    mark(entry, writable: entry.flags & Self.descriptorWrite != 0)
                }
            } else {
                mark(descriptor, writable: descriptor.flags & Self.descriptorWrite != 0)
            }
            position = position + 1 == size ? 0 : position + 1
        }
    }

    // MARK: Notifications

    /// Whether the driver wants an interrupt for the chains completed since the last call (§2.8.10, §2.8.21.3).
    public mutating func needsNotification() -> Bool {
        // Our used descriptors must be visible before we read the driver's event structure.
        cvfs_fence_seq_cst()
        let event = unsafe UInt32(littleEndian: cvfs_load_relaxed_u32(driverEvent))
        let new = usedCount
        let old = signalledCount
        signalledCount = new
        switch event >> 16 {
        case Self.eventDisable: return false
        case Self.eventDescriptor where eventIndex:
            guard let old else { return true }
            // The driver wants to hear once we write at its position `offset` of lap `wrap`; a position of the
            // previous lap counts `size` lower, as in the split ring's comparison.
            let offWrap = UInt16(truncatingIfNeeded: event)
            var offset = offWrap & ~Self.wrapBit
            if (offWrap & Self.wrapBit != 0) != usedWrap { offset &-= size }
            return nextUsed &- offset &- 1 < new &- old
        default: return true
        }
    }

    /// Asks the driver to kick for the next chain: with EVENT_IDX, at our next position and lap; otherwise for
    /// every chain. Returns whether a chain is available already (then keep serving).
    public func enableNotification() -> Bool {
        // SAFETY: our event structure was translated at init.
        let value = eventIndex
            ? UInt32(nextAvailable | (availableWrap ? Self.wrapBit : 0)) | Self.eventDescriptor << 16
            : Self.eventEnable << 16
        unsafe cvfs_store_relaxed_u32(deviceEvent, value.littleEndian)
        if logsRing, let log, let deviceEventGuestAddress { log.mark(deviceEventGuestAddress, length: 4) }
        cvfs_fence_seq_cst()
        return hasAvailable
    }

    // MARK: Logging and memory

    /// Starts or stops logging: `log` for the reply buffers, and the ring and our event structure when `usedAt`
    /// is given (VHOST_VRING_F_LOG). For a packed ring the device writes its used descriptors into the
    /// descriptor ring, so they are logged at the ring's own guest address: `usedAt` only says whether.
    public mutating func setLogging(_ log: DirtyLog?, usedAt: UInt64?) {
        self.log = log
        isLogging = log != nil
        logsRing = log != nil && usedAt != nil
    }

    /// Replaces the memory map keeping the ring position and the chains in flight.
    public mutating func updateMemory(
        _ memory: GuestMemoryMap, descriptorsAt: UInt64, availableAt: UInt64, usedAt: UInt64
    ) throws(VirtqueueError) {
        var next = try PackedQueue(
            size: size, descriptorsAt: descriptorsAt, driverEventAt: availableAt, deviceEventAt: usedAt, memory: memory,
            eventIndex: eventIndex, state: ringState, userAddresses: true, chains: chains)
        next.usedCount = usedCount
        next.signalledCount = signalledCount
        next.log = log
        next.isLogging = isLogging
        next.logsRing = logsRing
        self = next
    }
}

extension PackedQueue: DeviceQueue {}

/// What a packed queue keeps of the chains it consumed, by start position: the number of positions and the
/// buffer id (0 positions: not in flight), and a copy of every descriptor as it was read.
// SAFETY: Owns its three tables, each of `size` entries; callers index them below size.
@safe
final class PackedChains {
    let lengths: UnsafeMutablePointer<UInt16>
    let ids: UnsafeMutablePointer<UInt16>
    let shadow: UnsafeMutableRawPointer

    init(size: UInt16) {
        // SAFETY: allocates and zeroes what this object owns.
        let n = Int(size)
        unsafe lengths = .allocate(capacity: n)
        unsafe lengths.initialize(repeating: 0, count: n)
        unsafe ids = .allocate(capacity: n)
        unsafe ids.initialize(repeating: 0, count: n)
        unsafe shadow = .allocate(byteCount: n * PackedQueue.descriptorSize, alignment: 16)
        unsafe shadow.initializeMemory(as: UInt8.self, repeating: 0, count: n * PackedQueue.descriptorSize)
    }

    deinit {
        // SAFETY: frees what init allocated, once.
        unsafe lengths.deallocate()
        unsafe ids.deallocate()
        unsafe shadow.deallocate()
    }
}
