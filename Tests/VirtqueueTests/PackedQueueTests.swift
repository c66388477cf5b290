// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import GuestMemory
import Testing
import VFSSystem
import Virtqueue
import VirtqueueDriver

/// The device's view of a packed driver's queue, from where the driver stands.
func packedQueue(_ driver: VirtqueueDriver, eventIndex: Bool = false) throws -> PackedQueue {
    try PackedQueue(
        size: driver.size, descriptorsAt: driver.userAddress(driver.descriptorsAddress),
        driverEventAt: driver.userAddress(driver.availableAddress), deviceEventAt: driver.userAddress(driver.usedAddress),
        memory: driver.memory, eventIndex: eventIndex, state: driver.packedState)
}

/// Writes raw packed descriptors at ring positions, as a driver that does not follow the spec would.
func setRaw(_ driver: VirtqueueDriver, position: UInt16, address: UInt64, length: UInt32, id: UInt16, flags: UInt16) {
    driver.setPackedDescriptor(
        at: driver.descriptorsAddress + 16 * UInt64(position), address: address, length: length, id: id, flags: flags)
}

/// AVAIL set, USED clear: available in the first lap.
let firstLap: UInt16 = 1 << 7

@Suite("Packed virtqueue")
struct PackedQueueTests {
    @Test("a chain splits into readable and writable buffers; the used descriptor carries its id and length")
    func plainChain() throws {
        let driver = try VirtqueueDriver(size: 16, packed: true)
        var queue = try packedQueue(driver)
        let request = driver.write([1, 2, 3, 4, 5])
        let more = driver.write([6, 7])
        let reply = driver.allocate(64)
        let id = driver.makeChain([
            .init(address: request, length: 5, writable: false),
            .init(address: more, length: 2, writable: false),
            .init(address: reply, length: 64, writable: true),
        ])
        #expect(!queue.hasAvailable)
        driver.publish(id)
        #expect(queue.hasAvailable)

        let chain = DescriptorChain(capacity: 8)
        #expect(try queue.pop(into: chain))
        #expect(chain.head == 0)  // the position it started at
        #expect(chain.readableCount == 2 && chain.writableCount == 1)
        #expect(chain.readableLength == 7 && chain.writableLength == 64)
        #expect(bytes(of: chain.readable[0]) == [1, 2, 3, 4, 5])
        #expect(bytes(of: chain.readable[1]) == [6, 7])
        #expect(try !queue.pop(into: chain))
        #expect(queue.nextAvailable == 3)

        queue.complete(head: chain.head, length: 9)
        #expect(driver.takeUsed() == [.init(head: id, length: 9)])
        // The used descriptor went at position 0; the next one goes past the chain's three positions.
        #expect(queue.nextUsed == 3 && driver.usedPosition == 3)
        // Completing it again, or a position never handed out, writes nothing.
        queue.complete(head: 0, length: 1)
        queue.complete(head: 7, length: 1)
        #expect(driver.takeUsed().isEmpty)
    }

    @Test("out-of-order completions write used descriptors in completion order, each with its own id")
    func outOfOrder() throws {
        let driver = try VirtqueueDriver(size: 8, packed: true)
        var queue = try packedQueue(driver)
        let buffer = driver.allocate(16)
        let ids = (0..<3).map { n in
            driver.makeChain(Array(repeating: .init(address: buffer, length: 16, writable: true), count: n + 1))
        }
        driver.publish(ids)
        let chain = DescriptorChain(capacity: 8)
        var heads: [UInt16] = []
        while try queue.pop(into: chain) { heads.append(chain.head) }
        #expect(heads == [0, 1, 3])
        queue.complete(head: 3, length: 30)
        queue.complete(head: 0, length: 10)
        queue.complete(head: 1, length: 20)
        #expect(driver.takeUsed() == [.init(head: ids[2], length: 30), .init(head: ids[0], length: 10), .init(head: ids[1], length: 20)])
        #expect(queue.nextUsed == 6 && driver.usedPosition == 6)
    }

    @Test("positions and wrap counters carry across the ring's end, many laps, with a size that is not a power of two")
    func wrapAround() throws {
        let driver = try VirtqueueDriver(size: 7, packed: true)
        var queue = try packedQueue(driver)
        let chain = DescriptorChain(capacity: 8)
        let reply = driver.allocate(8)
        for round in 0..<40 {
            let id = driver.makeChain([
                .init(address: reply, length: 8, writable: true), .init(address: reply, length: 8, writable: true),
                .init(address: reply, length: 8, writable: true),
            ])
            driver.publish(id)
            #expect(try queue.pop(into: chain))
            #expect(chain.writableCount == 3)
            queue.complete(head: chain.head, length: UInt32(round))
            #expect(driver.takeUsed() == [.init(head: id, length: UInt32(round))])
            #expect(try !queue.pop(into: chain))
        }
        // 120 positions on a ring of 7: 17 laps and 1; each wrap counter flipped 17 times.
        #expect(queue.nextAvailable == 1 && queue.nextUsed == 1)
        #expect(!queue.availableWrap && !queue.usedWrap)
        #expect(queue.ringState == driver.packedState)
    }

    @Test("the state SET_VRING_BASE gives is where a restarted queue continues; positions past the ring are refused")
    func ringState() throws {
        let driver = try VirtqueueDriver(size: 8, packed: true)
        var queue = try packedQueue(driver)
        let chain = DescriptorChain(capacity: 8)
        let reply = driver.allocate(8)
        for _ in 0..<11 {
            driver.publish(driver.makeChain([.init(address: reply, length: 8, writable: true)]))
            #expect(try queue.pop(into: chain))
            queue.complete(head: chain.head, length: 1)
            _ = driver.takeUsed()
        }
        // 11 positions: index 3 in the second lap (wrap counters now 0).
        #expect(queue.ringState == 0x0003_0003)
        var restarted = try PackedQueue(
            size: 8, descriptorsAt: driver.userAddress(driver.descriptorsAddress),
            driverEventAt: driver.userAddress(driver.availableAddress), deviceEventAt: driver.userAddress(driver.usedAddress),
            memory: driver.memory, eventIndex: false, state: queue.ringState)
        let id = driver.makeChain([.init(address: reply, length: 8, writable: true)])
        driver.publish(id)
        #expect(try restarted.pop(into: chain))
        restarted.complete(head: chain.head, length: 5)
        #expect(driver.takeUsed() == [.init(head: id, length: 5)])

        for state: UInt32 in [0x0000_0008, 0x0008_0000, 0x8000_7fff, 0xffff_ffff] {
            #expect(throws: VirtqueueError.ringStateOutOfRange(state)) {
                try PackedQueue(
                    size: 8, descriptorsAt: driver.userAddress(driver.descriptorsAddress),
                    driverEventAt: driver.userAddress(driver.availableAddress),
                    deviceEventAt: driver.userAddress(driver.usedAddress), memory: driver.memory, eventIndex: false, state: state)
            }
        }
    }

    @Test("an indirect descriptor's table gives the chain's buffers; its entries' NEXT and ids are ignored")
    func indirectChain() throws {
        let driver = try VirtqueueDriver(size: 8, packed: true)
        var queue = try packedQueue(driver)
        let a = driver.write(Array(repeating: 7, count: 40))
        let b = driver.allocate(100)
        let c = driver.allocate(28)
        let id = driver.makeIndirectChain([
            .init(address: a, length: 40, writable: false),
            .init(address: b, length: 100, writable: true),
            .init(address: c, length: 28, writable: true),
        ])
        driver.publish(id)
        let chain = DescriptorChain(capacity: 8)
        #expect(try queue.pop(into: chain))
        #expect(chain.readableCount == 1 && chain.writableCount == 2)
        #expect(chain.readableLength == 40 && chain.writableLength == 128)
        #expect(bytes(of: chain.readable[0]) == Array(repeating: 7, count: 40))
        queue.complete(head: chain.head, length: 128)
        #expect(driver.takeUsed() == [.init(head: id, length: 128)])
        #expect(queue.nextUsed == 1)
    }

    @Test("EVENT_IDX: interrupts only when the driver's event position is crossed, in its lap")
    func eventIndex() throws {
        let driver = try VirtqueueDriver(size: 8, packed: true)
        var queue = try packedQueue(driver, eventIndex: true)
        let chain = DescriptorChain(capacity: 4)
        let reply = driver.allocate(8)
        func notify() -> Bool { queue.needsNotification() }
        func serveOne() throws {
            driver.publish(driver.makeChain([.init(address: reply, length: 8, writable: true)]))
            #expect(try queue.pop(into: chain))
            queue.complete(head: chain.head, length: 0)
            #expect(driver.takeUsed().count == 1)
        }
        try serveOne()
        #expect(notify())  // the first decision always notifies
        // The driver wants to hear when position 3 of the first lap is written.
        driver.setDriverEvent(offsetAndWrap: 0x8003, flags: 2)
        try serveOne()  // position 1
        #expect(!notify())
        try serveOne()  // 2
        #expect(!notify())
        try serveOne()  // 3: crossed
        #expect(notify())
        // An event in the next lap (wrap 0) is not crossed by positions 4 to 7 of this one.
        driver.setDriverEvent(offsetAndWrap: 0x0001, flags: 2)
        for _ in 4..<8 {
            try serveOne()
            #expect(!notify())
        }
        try serveOne()  // position 0 of lap 2
        #expect(!notify())
        try serveOne()  // position 1 of lap 2: crossed
        #expect(notify())
        // An event the used position passed a lap ago, written late: several positions at once cross it.
        driver.setDriverEvent(offsetAndWrap: 0x8007, flags: 2)  // position 7 of the previous lap
        try serveOne()
        #expect(!notify())
        driver.setDriverEvent(offsetAndWrap: 0x0003, flags: 2)
        try serveOne()
        try serveOne()  // positions 3 and 4 together: 3 is among them
        #expect(notify())
        // DISABLE and ENABLE work with EVENT_IDX too.
        driver.setDriverEvent(offsetAndWrap: 0, flags: 1)
        try serveOne()
        #expect(!notify())
        driver.setDriverEvent(offsetAndWrap: 0, flags: 0)
        try serveOne()
        #expect(notify())
        _ = driver.takeUsed()
    }

    @Test("EVENT_IDX: an event position at the end of a lap is seen crossed by completions that run into the next lap")
    func eventAcrossLaps() throws {
        let driver = try VirtqueueDriver(size: 8, packed: true)
        var queue = try packedQueue(driver, eventIndex: true)
        let chain = DescriptorChain(capacity: 4)
        let reply = driver.allocate(8)
        func serve(_ count: Int) throws {
            for _ in 0..<count {
                driver.publish(driver.makeChain([.init(address: reply, length: 8, writable: true)]))
                #expect(try queue.pop(into: chain))
                queue.complete(head: chain.head, length: 0)
                #expect(driver.takeUsed().count == 1)
            }
        }
        try serve(6)
        var notify = queue.needsNotification()
        #expect(notify)
        driver.setDriverEvent(offsetAndWrap: 0x8007, flags: 2)  // position 7 of the first lap
        try serve(3)  // positions 6, 7 and 0 of the second lap
        notify = queue.needsNotification()
        #expect(notify)
        driver.setDriverEvent(offsetAndWrap: 0x0005, flags: 2)  // position 5 of the second lap
        try serve(3)  // 1, 2, 3
        notify = queue.needsNotification()
        #expect(!notify)
    }

    @Test("without EVENT_IDX the driver's flags decide, and a DESC it should not send means enable")
    func flagsOnly() throws {
        let driver = try VirtqueueDriver(size: 8, packed: true)
        var queue = try packedQueue(driver)
        func notify() -> Bool { queue.needsNotification() }
        driver.setDriverEvent(offsetAndWrap: 0, flags: 1)
        #expect(!notify())
        driver.setDriverEvent(offsetAndWrap: 0, flags: 0)
        #expect(notify())
        driver.setDriverEvent(offsetAndWrap: 0x8005, flags: 2)
        #expect(notify())
    }

    @Test("asking for kicks: the device's event structure names the next position and lap with EVENT_IDX")
    func kicks() throws {
        let driver = try VirtqueueDriver(size: 4, packed: true)
        var queue = try packedQueue(driver, eventIndex: true)
        let chain = DescriptorChain(capacity: 4)
        let reply = driver.allocate(8)
        #expect(!queue.enableNotification())
        #expect(driver.deviceEvent == 0x0002_8000)  // DESC, position 0, wrap 1
        for _ in 0..<5 {
            let before = driver.availableIndex
            driver.publish(driver.makeChain([.init(address: reply, length: 8, writable: true)]))
            #expect(driver.needsKick(since: before))
            #expect(queue.enableNotification())  // a chain arrived: keep serving
            #expect(try queue.pop(into: chain))
            queue.complete(head: chain.head, length: 0)
            _ = driver.takeUsed()
            #expect(!queue.enableNotification())
        }
        #expect(driver.deviceEvent == 0x0002_0001)  // position 1 of the second lap
        // A driver that publishes two chains kicks once: the second does not cross the event again.
        var before = driver.availableIndex
        driver.publish(driver.makeChain([.init(address: reply, length: 8, writable: true)]))
        #expect(driver.needsKick(since: before))
        before = driver.availableIndex
        driver.publish(driver.makeChain([.init(address: reply, length: 8, writable: true)]))
        #expect(!driver.needsKick(since: before))
        let plain = try packedQueue(driver)
        _ = plain.enableNotification()
        #expect(driver.deviceEvent == 0)  // ENABLE
    }

    @Test("a chain that never ends takes the whole ring, is malformed, and is returned with its id")
    func endlessChain() throws {
        let driver = try VirtqueueDriver(size: 4, packed: true)
        var queue = try packedQueue(driver)
        let buffer = driver.allocate(8)
        for p in UInt16(1)..<4 { setRaw(driver, position: p, address: buffer.rawValue, length: 8, id: 9, flags: firstLap | 1) }
        setRaw(driver, position: 0, address: buffer.rawValue, length: 8, id: 9, flags: firstLap | 1)
        let chain = DescriptorChain(capacity: 8)
        #expect(throws: VirtqueueError.invalidChain(head: 0, reason: .tooLong)) { try queue.pop(into: chain) }
        #expect(queue.nextAvailable == 0 && !queue.availableWrap)
        #expect(try !queue.pop(into: chain))  // position 0 in lap 2 is not available
        queue.complete(head: 0, length: 0)
        #expect(queue.nextUsed == 0 && !queue.usedWrap)
    }

    @Test("malformed chains are named, and still complete with their id past all their positions")
    func malformed() throws {
        let driver = try VirtqueueDriver(size: 16, packed: true)
        var queue = try packedQueue(driver)
        let readable = driver.allocate(8)
        let writable = driver.allocate(8)
        let table = driver.allocate(64, alignment: 16)
        let chain = DescriptorChain(capacity: 2)
        var ids: [UInt8] = []
        func expectFault(_ fault: ChainFault, positions: UInt16, _ write: (UInt16) -> Void) {
            let start = queue.nextAvailable
            write(start)
            #expect(throws: VirtqueueError.invalidChain(head: start, reason: fault)) { try queue.pop(into: chain) }
            #expect(queue.nextAvailable == start + positions)
            let usedAt = queue.nextUsed
            queue.complete(head: start, length: 0)
            #expect(queue.nextUsed == start + positions)
            ids.append(driver.read(GuestAddress(driver.descriptorsAddress + 16 * UInt64(usedAt) + 12), length: 1)[0])
        }
        expectFault(.readableAfterWritable, positions: 2) { p in
            setRaw(driver, position: p + 1, address: readable.rawValue, length: 8, id: 1, flags: firstLap)
            setRaw(driver, position: p, address: writable.rawValue, length: 8, id: 1, flags: firstLap | 2 | 1)
        }
        expectFault(.bufferNotInMemory, positions: 1) { p in
            setRaw(driver, position: p, address: 0xdead_0000_0000, length: 8, id: 2, flags: firstLap | 2)
        }
        expectFault(.indirectWithNext, positions: 2) { p in
            setRaw(driver, position: p + 1, address: writable.rawValue, length: 8, id: 3, flags: firstLap | 2)
            setRaw(driver, position: p, address: table.rawValue, length: 16, id: 3, flags: firstLap | 4 | 1)
        }
        expectFault(.indirectWithNext, positions: 2) { p in  // an indirect descriptor after another
            setRaw(driver, position: p + 1, address: table.rawValue, length: 16, id: 4, flags: firstLap | 4)
            setRaw(driver, position: p, address: readable.rawValue, length: 8, id: 4, flags: firstLap | 1)
        }
        expectFault(.badIndirectLength, positions: 1) { p in
            setRaw(driver, position: p, address: table.rawValue, length: 24, id: 5, flags: firstLap | 4)
        }
        expectFault(.bufferNotInMemory, positions: 1) { p in
            setRaw(driver, position: p, address: 0xdead_0000_0000, length: 32, id: 6, flags: firstLap | 4)
        }
        expectFault(.tooManySegments, positions: 3) { p in
            for i in UInt16(1)...2 { setRaw(driver, position: p + i, address: readable.rawValue, length: 8, id: 7, flags: firstLap | (i == 2 ? 0 : 1)) }
            setRaw(driver, position: p, address: readable.rawValue, length: 8, id: 7, flags: firstLap | 1)
        }
        // Every malformed chain went back with its id (the last descriptor's), in order.
        #expect(ids == [1, 2, 3, 4, 5, 6, 7])
    }

    @Test("a chain whose start is still in flight is handed out again but leaves the first one's id and length alone")
    func reusedStart() throws {
        let driver = try VirtqueueDriver(size: 4, packed: true)
        var queue = try packedQueue(driver)
        let buffer = driver.allocate(8)
        let chain = DescriptorChain(capacity: 4)
        setRaw(driver, position: 1, address: buffer.rawValue, length: 8, id: 21, flags: firstLap)
        setRaw(driver, position: 0, address: buffer.rawValue, length: 8, id: 21, flags: firstLap | 1)
        #expect(try queue.pop(into: chain))  // positions 0-1, id 21, in flight
        // A broken driver makes positions 2, 3 and (next lap) 0 available while chain 0 is in flight.
        setRaw(driver, position: 2, address: buffer.rawValue, length: 8, id: 22, flags: firstLap)
        setRaw(driver, position: 3, address: buffer.rawValue, length: 8, id: 23, flags: firstLap)
        setRaw(driver, position: 0, address: buffer.rawValue, length: 8, id: 24, flags: 1 << 15)
        #expect(try queue.pop(into: chain) && chain.head == 2)
        #expect(try queue.pop(into: chain) && chain.head == 3)
        #expect(try queue.pop(into: chain) && chain.head == 0)  // the caller sees head 0 in flight and ignores it
        queue.complete(head: 0, length: 4)
        #expect(driver.takeUsed() == [.init(head: 21, length: 4)])
        #expect(queue.nextUsed == 2)
    }

    @Test("rings outside guest memory, and sizes past 2^15, are refused")
    func ringsOutsideMemory() throws {
        let driver = try VirtqueueDriver(size: 8, packed: true)
        let d = driver.userAddress(driver.descriptorsAddress)
        let e = driver.userAddress(driver.availableAddress)
        let end = driver.userAddress(driver.guestBase) + UInt64(driver.mapping.length)
        for (descriptors, driverEvent, deviceEvent, size) in [
            (end - 64, e, e, UInt16(8)), (d, end - 2, e, 8), (d, e, end, 8), (d, e, e, 0), (d, e, e, 32769),
        ] {
            #expect(throws: VirtqueueError.ringNotInMemory) {
                try PackedQueue(
                    size: size, descriptorsAt: descriptors, driverEventAt: driverEvent, deviceEventAt: deviceEvent,
                    memory: driver.memory, eventIndex: false, state: 0x8000_8000)
            }
        }
    }

    @Test("while logging, a completion marks the reply's pages (from the copy taken at consumption), the used descriptor and our event structure")
    func logging() throws {
        // 512 descriptors: the ring fills two pages, the event structures are on the third.
        let driver = try VirtqueueDriver(size: 512, packed: true)
        var queue = try packedQueue(driver, eventIndex: true)
        let logFile = try makeMemoryFile(name: "packed-log", size: 4096)
        let logMapping = try MemoryMapping(fd: logFile.borrowed, length: 4096)
        let log = try DirtyLog(mapping: logMapping, offset: 0, size: 4096)
        let other = driver.allocate(4096, alignment: 4096)
        let reply = driver.allocate(3 * 4096, alignment: 4096)
        let chain = DescriptorChain(capacity: 8)

        // Consumed before logging starts, completed after: its reply is marked all the same.
        let id = driver.makeChain([.init(address: reply, length: 3 * 4096, writable: true)])
        driver.publish(id)
        #expect(try queue.pop(into: chain))
        let first = chain.head
        queue.setLogging(log, usedAt: 0)
        // Another chain completes first: its used descriptor overwrites the first chain's position in the ring.
        driver.publish(driver.makeChain([.init(address: other, length: 8, writable: true)]))
        #expect(try queue.pop(into: chain))
        queue.complete(head: chain.head, length: 8)
        #expect(log.isMarked(other.rawValue))
        #expect(!log.isMarked(reply.rawValue))
        queue.complete(head: first, length: 4096 + 10)
        #expect(log.isMarked(reply.rawValue))
        #expect(log.isMarked(reply.rawValue + 4096))
        #expect(!log.isMarked(reply.rawValue + 2 * 4096))  // not written
        #expect(log.isMarked(driver.descriptorsAddress))
        #expect(!log.isMarked(driver.usedAddress))
        _ = queue.enableNotification()
        #expect(log.isMarked(driver.usedAddress))
        #expect(driver.takeUsed().count == 2)
    }
}
