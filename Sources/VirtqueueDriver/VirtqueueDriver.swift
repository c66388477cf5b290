// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import GuestMemory
import VFSSystem

/// The driver's side of a virtqueue over memory we own, split or packed: what a guest kernel does, for tests and
/// for the host-side load generator. It lays out the rings, fills descriptors, publishes heads and reads
/// completions.
///
/// Packed (`packed: true`): the "available" and "used" addresses are the driver's and the device's event
/// suppression structures; a head is a buffer id, written into the ring only when it is published;
/// `availableIndex` counts descriptors made available (wrapping), not chains.
public final class VirtqueueDriver {
    /// A buffer to put in a chain.
    public struct Buffer: Sendable {
        public var address: GuestAddress
        public var length: UInt32
        public var writable: Bool
        public init(address: GuestAddress, length: UInt32, writable: Bool) {
            self.address = address
            self.length = length
            self.writable = writable
        }
    }

    /// A completion read back from the used ring.
    public struct Completion: Equatable, Sendable {
        public var head: UInt16
        public var length: UInt32
        public init(head: UInt16, length: UInt32) {
            self.head = head
            self.length = length
        }
    }

    public let size: UInt16
    /// The memory file, for SET_MEM_TABLE (vhost-user tests and the load generator).
    public let memoryFile: OwnedFD
    public let mapping: MemoryMapping
    /// The whole memory, as the device sees it.
    public let memory: GuestMemoryMap
    /// Guest physical address of the first byte of memory.
    public let guestBase: UInt64
    /// The "front-end virtual address" of the first byte, distinct from `guestBase` so that tests catch a mix-up.
    public let userBase: UInt64
    /// Guest addresses of the three rings.
    public let descriptorsAddress: UInt64
    public let availableAddress: UInt64
    public let usedAddress: UInt64

    private var dataStart: UInt64
    private var dataNext: UInt64
    private var freeDescriptors: [UInt16]
    private var chains: [UInt16: [UInt16]] = [:]
    private var indirectTables: Set<UInt16> = []
    /// The driver's next avail.idx.
    public private(set) var availableIndex: UInt16
    /// The used.idx we have consumed up to.
    public private(set) var lastUsed: UInt16

    /// Whether this is a packed ring.
    public let packed: Bool
    /// Packed: the next ring position to fill and its wrap counter; the next position to read a used
    /// descriptor at and its wrap counter; per buffer id, the buffers of a chain made and not yet published,
    /// and the ring positions of a published one.
    public private(set) var availablePosition: UInt16 = 0
    public private(set) var availableWrap = true
    public private(set) var usedPosition: UInt16 = 0
    public private(set) var usedWrap = true
    private var pending: [UInt16: [(address: UInt64, length: UInt32, flags: UInt16)]] = [:]
    private var positions: [UInt16]
    private var freeIDs: [UInt16]
    /// Packed chains whose flags are used as given (no NEXT added).
    private var rawChains: Set<UInt16> = []

    /// Lays out a queue of `size` entries in `memorySize` bytes of fresh shared memory.
    /// - Parameter startIndex: the avail and used indexes to start from (to test wrap-around).
    public init(
        size: UInt16, memorySize: Int = 8 << 20, guestBase: UInt64 = 0x1_0000, userBase: UInt64 = 0x7f00_0000_0000,
        startIndex: UInt16 = 0, packed: Bool = false
    ) throws {
        self.size = size
        self.packed = packed
        positions = [UInt16](repeating: 0, count: Int(size))
        freeIDs = (0..<size).reversed()
        self.guestBase = guestBase
        self.userBase = userBase
        memoryFile = try makeMemoryFile(name: "virtqueue-driver", size: memorySize)
        mapping = try MemoryMapping(fd: memoryFile.borrowed, length: memorySize)
        let region = try GuestMemoryRegion(
            guestAddress: guestBase, size: UInt64(memorySize), userAddress: userBase, mapping: mapping, offset: 0)
        memory = try GuestMemoryMap(regions: [region])
        let n = UInt64(size)
        func align(_ value: UInt64, _ to: UInt64) -> UInt64 { (value + to - 1) / to * to }
        descriptorsAddress = guestBase
        availableAddress = align(descriptorsAddress + 16 * n, 64)
        usedAddress = packed ? availableAddress + 64 : align(availableAddress + 6 + 2 * n, 4096)
        dataStart = align(usedAddress + (packed ? 4 : 6 + 8 * n), 4096)
        dataNext = dataStart
        freeDescriptors = (0..<size).reversed()
        availableIndex = startIndex
        lastUsed = startIndex
        if packed {
            // Where a ring restarted from state `startIndex` stands: that position in the first lap.
            availablePosition = startIndex % size
            usedPosition = startIndex % size
        } else {
            storeU16(availableAddress + 2, startIndex)
            storeU16(usedAddress + 2, startIndex)
        }
    }

    /// Whether the device has returned everything published (nothing in flight).
    public var allReturned: Bool {
        packed ? availablePosition == usedPosition && availableWrap == usedWrap : usedIndex == availableIndex
    }

    /// Packed: the state SET_VRING_BASE gives the device for this driver's positions and wrap counters.
    public var packedState: UInt32 {
        UInt32(availablePosition | (availableWrap ? 0x8000 : 0)) | UInt32(usedPosition | (usedWrap ? 0x8000 : 0)) << 16
    }

    // MARK: Memory

    /// The host pointer of a guest address in this memory (trapping outside it: test code only).
    public func pointer(_ address: GuestAddress) -> UnsafeMutableRawPointer {
        // SAFETY: test and load-generator code: addresses are the driver's own allocations inside its mapping.
        unsafe mapping.base + Int(address.rawValue - guestBase)
    }

    /// The front-end virtual address of a guest address.
    public func userAddress(_ address: UInt64) -> UInt64 { address - guestBase + userBase }

    /// Allocates `length` bytes of buffer space (a bump allocator; `resetBuffers` frees everything).
    public func allocate(_ length: Int, alignment: UInt64 = 8) -> GuestAddress {
        let start = (dataNext + alignment - 1) / alignment * alignment
        precondition(start + UInt64(length) <= guestBase + UInt64(mapping.length), "test memory exhausted")
        dataNext = start + UInt64(length)
        return GuestAddress(start)
    }

    /// Frees every buffer from `allocate`.
    public func resetBuffers() { dataNext = dataStart }

    /// Copies `bytes` into new buffer space.
    public func write(_ bytes: [UInt8]) -> GuestAddress {
        // SAFETY: copies into space just allocated for exactly these bytes.
        let address = allocate(max(bytes.count, 1))
        unsafe bytes.withUnsafeBytes { unsafe pointer(address).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        return address
    }

    /// Reads `length` bytes of guest memory.
    public func read(_ address: GuestAddress, length: Int) -> [UInt8] {
        // SAFETY: callers read what they allocated (a reply buffer).
        unsafe Array(UnsafeRawBufferPointer(start: pointer(address), count: length))
    }

    func storeU16(_ address: UInt64, _ value: UInt16) {
        // SAFETY: ring fields inside the driver's own mapping.
        unsafe pointer(GuestAddress(address)).storeBytes(of: value.littleEndian, as: UInt16.self)
    }

    func loadU16(_ address: UInt64) -> UInt16 {
        // SAFETY: ring fields inside the driver's own mapping.
        unsafe UInt16(littleEndian: pointer(GuestAddress(address)).loadUnaligned(as: UInt16.self))
    }

    // MARK: Descriptors

    /// Writes descriptor `index` of the table at `table` as the driver would.
    // SAFETY: the index is the caller's, inside the table it laid out.
    public func setDescriptor(
        table: UInt64? = nil, index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16
    ) {
        let p = unsafe pointer(GuestAddress((table ?? descriptorsAddress) + 16 * UInt64(index)))
        unsafe p.storeBytes(of: address.littleEndian, as: UInt64.self)
        unsafe p.storeBytes(of: length.littleEndian, toByteOffset: 8, as: UInt32.self)
        unsafe p.storeBytes(of: flags.littleEndian, toByteOffset: 12, as: UInt16.self)
        unsafe p.storeBytes(of: next.littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    /// Builds a chain of `buffers` in the descriptor table and returns its head (not yet published).
    public func makeChain(_ buffers: [Buffer]) -> UInt16 {
        if packed {
            let id = freeIDs.removeLast()
            pending[id] = buffers.map { ($0.address.rawValue, $0.length, $0.writable ? 2 : 0) }
            return id
        }
        precondition(!buffers.isEmpty && buffers.count <= freeDescriptors.count, "no free descriptors")
        let ids = (0..<buffers.count).map { _ in freeDescriptors.removeLast() }
        for (i, buffer) in buffers.enumerated() {
            let last = i == buffers.count - 1
            setDescriptor(
                index: ids[i], address: buffer.address.rawValue, length: buffer.length,
                flags: (buffer.writable ? 2 : 0) | (last ? 0 : 1), next: last ? 0 : ids[i + 1])
        }
        chains[ids[0]] = ids
        return ids[0]
    }

    /// Builds a one-descriptor chain pointing to an indirect table that holds `buffers`.
    public func makeIndirectChain(_ buffers: [Buffer]) -> UInt16 {
        let table = allocate(16 * buffers.count, alignment: 16)
        if packed {
            // In a packed indirect table only WRITE counts; entries follow one another.
            for (i, buffer) in buffers.enumerated() {
                setPackedDescriptor(
                    at: table.rawValue + 16 * UInt64(i), address: buffer.address.rawValue, length: buffer.length, id: 0,
                    flags: buffer.writable ? 2 : 0)
            }
            let id = freeIDs.removeLast()
            pending[id] = [(table.rawValue, UInt32(16 * buffers.count), 4)]
            return id
        }
        for (i, buffer) in buffers.enumerated() {
            let last = i == buffers.count - 1
            setDescriptor(
                table: table.rawValue, index: UInt16(i), address: buffer.address.rawValue, length: buffer.length,
                flags: (buffer.writable ? 2 : 0) | (last ? 0 : 1), next: last ? 0 : UInt16(i + 1))
        }
        let id = freeDescriptors.removeLast()
        setDescriptor(index: id, address: table.rawValue, length: UInt32(16 * buffers.count), flags: 4, next: 0)
        chains[id] = [id]
        return id
    }

    /// Fast path for a load generator: publishes a fixed pair of descriptors `2 * slot` and `2 * slot + 1`
    /// (a readable request and a writable reply) without allocating. Do not mix with `makeChain` on one queue.
    public func publishPair(slot: Int, request: GuestAddress, requestLength: UInt32, reply: GuestAddress, replyLength: UInt32) -> UInt16 {
        if packed {
            // Buffer id `slot`, in the next one or two ring positions, the head's flags last.
            let id = UInt16(slot)
            let start = availablePosition
            let startFlags = availabilityFlags(availableWrap) | (replyLength > 0 ? 1 : 0)
            let headAddress = descriptorsAddress + 16 * UInt64(start)
            advanceAvailable()
            setPackedDescriptor(at: headAddress, address: request.rawValue, length: requestLength, id: id, flags: nil)
            if replyLength > 0 {
                setPackedDescriptor(
                    at: descriptorsAddress + 16 * UInt64(availablePosition), address: reply.rawValue, length: replyLength,
                    id: id, flags: 2 | availabilityFlags(availableWrap))
                advanceAvailable()
            }
            positions[Int(id)] = replyLength > 0 ? 2 : 1
            publishPackedHead(at: headAddress, flags: startFlags)
            return id
        }
        let head = UInt16(2 * slot)
        if replyLength > 0 {
            setDescriptor(index: head, address: request.rawValue, length: requestLength, flags: 1, next: head + 1)
            setDescriptor(index: head + 1, address: reply.rawValue, length: replyLength, flags: 2, next: 0)
        } else {
            setDescriptor(index: head, address: request.rawValue, length: requestLength, flags: 0, next: 0)
        }
        publish(head)
        return head
    }

    /// Calls `body` with each completion published since the last call, without allocating (pairs only).
    public func drainUsed(_ body: (Completion) -> Void) {
        // SAFETY: slots are masked to the ring's size, inside the used ring the driver laid out.
        if packed {
            while let (id, length) = takePackedUsed() { body(Completion(head: id, length: length)) }
            return
        }
        let end = usedIndex
        while lastUsed != end {
            let slot = UInt64(lastUsed & (size - 1))
            let p = unsafe pointer(GuestAddress(usedAddress + 4 + 8 * slot))
            let head = unsafe UInt16(truncatingIfNeeded: UInt32(littleEndian: p.loadUnaligned(as: UInt32.self)))
            let length = unsafe UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
            lastUsed &+= 1
            body(Completion(head: head, length: length))
        }
    }

    /// Makes all of `heads` available at once: every ring slot first, then avail.idx once (release), so the
    /// device sees them as one batch.
    public func publish(_ heads: [UInt16]) {
        if packed {
            for head in heads { publishPacked(head) }
            return
        }
        for head in heads { fillSlot(head) }
        publishAvailableIndex()
    }

    /// Makes `head` available to the device: writes the ring slot, then publishes avail.idx (release).
    public func publish(_ head: UInt16) {
        if packed {
            publishPacked(head)
            return
        }
        fillSlot(head)
        publishAvailableIndex()
    }

    /// Writes `head` into the next slot of the available ring, not yet visible to the device.
    private func fillSlot(_ head: UInt16) {
        // The slot is masked to the ring's size, inside the available ring the driver laid out.
        let slot = UInt64(availableIndex & (size - 1))
        storeU16(availableAddress + 4 + 2 * slot, head)
        availableIndex &+= 1
    }

    /// Stores avail.idx with release order: the device sees every slot filled before it.
    private func publishAvailableIndex() {
        // SAFETY: avail.idx is a ring field inside the driver's own mapping.
        unsafe cvfs_store_release_u16(pointer(GuestAddress(availableAddress + 2)), availableIndex.littleEndian)
    }

    /// Sets avail.idx to any value (to test a misbehaving driver).
    public func setAvailableIndex(_ value: UInt16) {
        availableIndex = value
        storeU16(availableAddress + 2, value)
    }

    /// Sets `used_event` (EVENT_IDX): the used index after which the driver wants an interrupt.
    public func setUsedEvent(_ value: UInt16) { storeU16(availableAddress + 4 + 2 * UInt64(size), value) }

    /// EVENT_IDX, as a Linux guest re-arms its interrupt before it sleeps: asks for an interrupt at the next
    /// completion, then reports whether completions arrived meanwhile (if so, drain them instead of sleeping).
    public func armUsedEvent() -> Bool {
        if packed {
            // The driver's event structure: interrupt when the device writes at our next used position.
            storeU32(availableAddress, UInt32(usedPosition | (usedWrap ? 0x8000 : 0)) | 2 << 16)
            cvfs_fence_seq_cst()
            return !hasPackedUsed
        }
        setUsedEvent(lastUsed)
        // used_event must be visible before we look at used.idx again (the device does the converse).
        cvfs_fence_seq_cst()
        return usedIndex == lastUsed
    }

    /// EVENT_IDX: whether the device asked to be kicked for the heads published since avail.idx was `old`
    /// (virtio 1.2 §2.7.10: it wants a kick once avail.idx passes its avail_event).
    public func needsKick(since old: UInt16) -> Bool {
        cvfs_fence_seq_cst()
        if packed {
            let event = deviceEvent
            switch event >> 16 {
            case 0: return true
            case 1: return false
            default:
                let offWrap = UInt16(truncatingIfNeeded: event)
                var offset = offWrap & 0x7fff
                if (offWrap & 0x8000 != 0) != availableWrap { offset &-= size }
                return availablePosition &- offset &- 1 < availableIndex &- old
            }
        }
        let event = availableEvent
        return availableIndex &- event &- 1 < availableIndex &- old
    }

    /// Sets avail.flags (1 = no interrupt).
    // SAFETY: a ring field inside the driver's own mapping.
    public func setAvailableFlags(_ value: UInt16) { storeU16(availableAddress, value) }

    /// `avail_event` as the device last wrote it.
    public var availableEvent: UInt16 { loadU16(usedAddress + 4 + 8 * UInt64(size)) }

    /// used.idx as the device last published it.
    public var usedIndex: UInt16 { unsafe cvfs_load_acquire_u16(pointer(GuestAddress(usedAddress + 2))) }

    /// Reads the completions published since the last call and frees their descriptors.
    public func takeUsed() -> [Completion] {
        var result: [Completion] = []
        drainUsed { completion in
            result.append(completion)
            if packed {
                if completion.head < size && !freeIDs.contains(completion.head) { freeIDs.append(completion.head) }
                return
            }
            if let ids = chains.removeValue(forKey: completion.head) { freeDescriptors.append(contentsOf: ids.reversed()) }
        }
        return result
    }

    // MARK: Packed ring

    func storeU32(_ address: UInt64, _ value: UInt32) {
        // SAFETY: an event structure inside the driver's own mapping.
        unsafe cvfs_store_relaxed_u32(pointer(GuestAddress(address)), value.littleEndian)
    }

    /// Packed: the device's event suppression structure (offset and wrap, flags in the high half).
    public var deviceEvent: UInt32 {
        // SAFETY: an event structure inside the driver's own mapping.
        unsafe UInt32(littleEndian: cvfs_load_relaxed_u32(pointer(GuestAddress(usedAddress))))
    }

    /// Packed: sets the driver's event suppression structure (offset and wrap, flags) as a driver would.
    public func setDriverEvent(offsetAndWrap: UInt16, flags: UInt16) {
        storeU32(availableAddress, UInt32(offsetAndWrap) | UInt32(flags) << 16)
    }

    /// AVAIL and USED bits that make a descriptor available in the lap of `wrap`.
    func availabilityFlags(_ wrap: Bool) -> UInt16 { wrap ? 1 << 7 : 1 << 15 }

    func advanceAvailable() {
        availablePosition += 1
        availableIndex &+= 1
        if availablePosition == size {
            availablePosition = 0
            availableWrap.toggle()
        }
    }

    /// Writes a packed descriptor; `flags` nil leaves the flags as they are (a head, published last).
    public func setPackedDescriptor(at address: UInt64, address buffer: UInt64, length: UInt32, id: UInt16, flags: UInt16?) {
        // SAFETY: a descriptor inside the driver's own mapping.
        let p = unsafe pointer(GuestAddress(address))
        unsafe p.storeBytes(of: buffer.littleEndian, as: UInt64.self)
        unsafe p.storeBytes(of: length.littleEndian, toByteOffset: 8, as: UInt32.self)
        unsafe p.storeBytes(of: id.littleEndian, toByteOffset: 12, as: UInt16.self)
        if let flags { unsafe p.storeBytes(of: flags.littleEndian, toByteOffset: 14, as: UInt16.self) }
    }

    /// Stores a head's flags with release ordering: the device sees the whole chain before it.
    func publishPackedHead(at address: UInt64, flags: UInt16) {
        // SAFETY: a descriptor inside the driver's own mapping.
        unsafe cvfs_store_release_u16(pointer(GuestAddress(address + 14)), flags.littleEndian)
    }

    /// Packed: a chain of descriptors exactly as given (flags without the availability bits, NEXT included or
    /// not), as a driver that does not follow the spec writes them; returns its id, to publish.
    public func makeRawPackedChain(_ descriptors: [(address: UInt64, length: UInt32, flags: UInt16)]) -> UInt16 {
        let id = freeIDs.removeLast()
        pending[id] = descriptors
        rawChains.insert(id)
        return id
    }

    /// Writes the chain made under `id` into the next ring positions (its id in each), the head's flags last.
    private func publishPacked(_ id: UInt16) {
        guard let buffers = pending.removeValue(forKey: id), !buffers.isEmpty else { return }
        let raw = rawChains.remove(id) != nil
        let headAddress = descriptorsAddress + 16 * UInt64(availablePosition)
        var headFlags: UInt16 = 0
        for (i, buffer) in buffers.enumerated() {
            let flags = buffer.flags | (raw || i == buffers.count - 1 ? 0 : 1) | availabilityFlags(availableWrap)
            let address = descriptorsAddress + 16 * UInt64(availablePosition)
            setPackedDescriptor(at: address, address: buffer.address, length: buffer.length, id: id, flags: i == 0 ? nil : flags)
            if i == 0 { headFlags = flags }
            advanceAvailable()
        }
        positions[Int(id)] = UInt16(buffers.count)
        publishPackedHead(at: headAddress, flags: headFlags)
    }

    /// Packed: whether the device has written a used descriptor at our next used position.
    var hasPackedUsed: Bool {
        // SAFETY: a descriptor inside the driver's own mapping.
        let flags = unsafe UInt16(littleEndian: cvfs_load_acquire_u16(pointer(GuestAddress(descriptorsAddress + 16 * UInt64(usedPosition) + 14))))
        return (flags & (1 << 7) != 0) == usedWrap && (flags & (1 << 15) != 0) == usedWrap
    }

    /// Packed: the next used descriptor (buffer id, length), moving past its chain's positions; nil when none.
    func takePackedUsed() -> (UInt16, UInt32)? {
        // SAFETY: a descriptor inside the driver's own mapping.
        guard hasPackedUsed else { return nil }
        let p = unsafe pointer(GuestAddress(descriptorsAddress + 16 * UInt64(usedPosition)))
        let length = unsafe UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        let id = unsafe UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
        let count = id < size ? max(positions[Int(id)], 1) : 1
        for _ in 0..<count {
            usedPosition += 1
            if usedPosition == size {
                usedPosition = 0
                usedWrap.toggle()
            }
        }
        lastUsed &+= 1
        return (id, length)
    }
}
