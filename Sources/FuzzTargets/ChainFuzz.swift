// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import GuestMemory
import VFSSystem
import Virtqueue

/// Fuzzes the split-ring reader: the input is guest memory holding a descriptor table, an available ring and
/// buffers, in two regions with a hole between them. Every chain the queue hands out must lie wholly inside
/// guest memory, and nothing a guest writes may make it trap or loop.
///
/// Input: u8 queue size (a power of two up to 256), u8 flags (bit 0: EVENT_IDX), u16 the index to start from,
/// u16 avail.idx, then the memory image (the descriptor table first).
public enum ChainFuzz {
    static let regionSize = 32 * 1024
    static let firstBase: UInt64 = 0x10000
    static let secondBase: UInt64 = 0x30000

    /// Guest memory, mapped once: two regions of one memory file.
    static let memory: (map: GuestMemoryMap, mapping: MemoryMapping) = {
        let file = try! makeMemoryFile(name: "fuzz-chain", size: 2 * regionSize)
        let mapping = try! MemoryMapping(fd: file.borrowed, length: 2 * regionSize)
        let first = try! GuestMemoryRegion(guestAddress: firstBase, size: UInt64(regionSize), userAddress: firstBase, mapping: mapping, offset: 0)
        let second = try! GuestMemoryRegion(
            guestAddress: secondBase, size: UInt64(regionSize), userAddress: secondBase, mapping: mapping, offset: UInt64(regionSize))
        return (try! GuestMemoryMap(regions: [first, second]), mapping)
    }()

    nonisolated(unsafe) static let chain = DescriptorChain(capacity: 1024, memory: memory.map)

    public static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let size = UInt16(1) << UInt16(input.u8() % 9)
        let eventIndex = input.u8() & 1 != 0
        let start = input.u16()
        let availableIndex = input.u16()
        let base = memory.mapping.base
        base.initializeMemory(as: UInt8.self, repeating: 0, count: 2 * regionSize)
        let image = input.take(2 * regionSize)
        image.withUnsafeBytes { if $0.count > 0 { base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        // The rings where a driver would put them: descriptors at the start of the first region, the available
        // ring after them, the used ring on the next 4-byte boundary.
        let descriptors = firstBase
        let available = descriptors + 16 * UInt64(size)
        let used = (available + 6 + 2 * UInt64(size) + 3) & ~3
        base.storeBytes(of: availableIndex.littleEndian, toByteOffset: Int(available - firstBase) + 2, as: UInt16.self)
        guard var queue = try? SplitQueue(
            size: size, descriptorsAt: descriptors, availableAt: available, usedAt: used, memory: memory.map,
            eventIndex: eventIndex, nextAvailable: start)
        else { return }
        let low = UInt(bitPattern: base)
        let high = low + UInt(2 * regionSize)
        for _ in 0..<(2 * Int(size) + 2) {
            do {
                guard try queue.pop(into: chain) else { break }
                for v in chain.readableBuffers { check(v, low, high) }
                for v in chain.writableBuffers { check(v, low, high) }
                precondition(chain.readableLength <= UInt64(UInt32.max) && chain.writableLength <= UInt64(UInt32.max))
                queue.complete(head: chain.headIndex, length: UInt32(truncatingIfNeeded: chain.writableLength))
            } catch {
                if case .invalidChain(let head, _) = error {
                    queue.complete(head: head, length: 0)
                } else {
                    break
                }
            }
            _ = queue.needsNotification()
        }
        _ = queue.enableNotification()
    }

    /// A buffer must lie inside guest memory.
    static func check(_ v: iovec, _ low: UInt, _ high: UInt) {
        let start = UInt(bitPattern: v.iov_base)
        precondition(start >= low && start <= high && UInt(v.iov_len) <= high - start, "a buffer outside guest memory")
    }
}

/// Fuzzes the packed-ring reader over the same two-region guest memory: the input is the ring (at the start of
/// the first region), the driver's event structure after it, and buffers; the queue starts from a state the
/// input gives. Every chain handed out must lie wholly inside guest memory; completions (in order or not, with
/// logging or not) and notifications must neither trap nor loop, and the positions stay inside the ring.
///
/// Input: u8 queue size minus one (1 to 256, any size), u8 flags (bit 0: EVENT_IDX, bit 1: log while serving,
/// bit 2: complete up to four chains out of order), u32 the SET_VRING_BASE state, then the memory image.
public enum PackedChainFuzz {
    nonisolated(unsafe) static let chain = DescriptorChain(capacity: 1024, memory: ChainFuzz.memory.map)

    /// A dirty log covering both regions, cleared for every input.
    static let log: (log: DirtyLog, mapping: MemoryMapping) = {
        let file = try! makeMemoryFile(name: "fuzz-packed-log", size: 4096)
        let mapping = try! MemoryMapping(fd: file.borrowed, length: 4096)
        return (try! DirtyLog(mapping: mapping, offset: 0, size: 4096), mapping)
    }()

    public static func run(_ data: UnsafeRawBufferPointer) {
        var input = FuzzInput(data)
        let size = UInt16(input.u8()) + 1
        let flags = input.u8()
        let state = input.u32()
        let memory = ChainFuzz.memory
        let base = memory.mapping.base
        let regionSize = ChainFuzz.regionSize
        base.initializeMemory(as: UInt8.self, repeating: 0, count: 2 * regionSize)
        let image = input.take(2 * regionSize)
        image.withUnsafeBytes { if $0.count > 0 { base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        let ring = ChainFuzz.firstBase
        let driverEvent = ring + 16 * UInt64(size)
        guard var queue = try? PackedQueue(
            size: size, descriptorsAt: ring, driverEventAt: driverEvent, deviceEventAt: driverEvent + 4,
            memory: memory.map, eventIndex: flags & 1 != 0, state: state)
        else { return }
        if flags & 2 != 0 {
            log.mapping.base.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
            queue.setLogging(log.log, usedAt: 0)
        }
        let low = UInt(bitPattern: base)
        let high = low + UInt(2 * regionSize)
        var held: [(UInt16, UInt32)] = []
        func finish(_ head: UInt16, _ length: UInt32) {
            if flags & 4 != 0 && held.count < 4 {
                held.append((head, length))
                return
            }
            queue.complete(head: head, length: length)
            while let (h, l) = held.popLast() { queue.complete(head: h, length: l) }
        }
        for _ in 0..<(2 * Int(size) + 2) {
            do {
                guard try queue.pop(into: chain) else { break }
                for v in chain.readableBuffers { ChainFuzz.check(v, low, high) }
                for v in chain.writableBuffers { ChainFuzz.check(v, low, high) }
                precondition(chain.readableLength <= UInt64(UInt32.max) && chain.writableLength <= UInt64(UInt32.max))
                precondition(chain.headIndex < size)
                finish(chain.headIndex, UInt32(truncatingIfNeeded: chain.writableLength))
            } catch {
                guard case .invalidChain(let head, _) = error else { break }
                finish(head, 0)
            }
            _ = queue.needsNotification()
            precondition(queue.nextAvailable < size && queue.nextUsed < size)
        }
        while let (h, l) = held.popLast() { queue.complete(head: h, length: l) }
        _ = queue.enableNotification()
        precondition(queue.nextAvailable < size && queue.nextUsed < size)
    }
}
