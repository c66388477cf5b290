// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import GuestMemory
import Testing
import Virtqueue
import VirtqueueDriver

/// Makes the device's view of the driver's queue.
func deviceQueue(_ driver: VirtqueueDriver, eventIndex: Bool = false) throws -> SplitQueue {
    try SplitQueue(
        size: driver.size, descriptorsAt: driver.userAddress(driver.descriptorsAddress),
        availableAt: driver.userAddress(driver.availableAddress), usedAt: driver.userAddress(driver.usedAddress),
        memory: driver.memory, eventIndex: eventIndex, nextAvailable: driver.availableIndex)
}

func bytes(of vector: iovec) -> [UInt8] {
    Array(UnsafeRawBufferPointer(start: vector.iov_base, count: vector.iov_len))
}

@Suite("Split virtqueue")
struct SplitQueueTests {
    @Test("a plain chain splits into readable and writable buffers, and completes")
    func plainChain() throws {
        let driver = try VirtqueueDriver(size: 16)
        var queue = try deviceQueue(driver)
        let request = driver.write([1, 2, 3, 4, 5])
        let more = driver.write([6, 7])
        let reply = driver.allocate(64)
        let head = driver.makeChain([
            .init(address: request, length: 5, writable: false),
            .init(address: more, length: 2, writable: false),
            .init(address: reply, length: 64, writable: true),
        ])
        #expect(!queue.hasAvailable)
        driver.publish(head)
        #expect(queue.hasAvailable)

        let chain = DescriptorChain(capacity: 8)
        #expect(try queue.pop(into: chain))
        #expect(chain.head == head)
        #expect(chain.readableCount == 2)
        #expect(chain.writableCount == 1)
        #expect(chain.readableLength == 7)
        #expect(chain.writableLength == 64)
        #expect(bytes(of: chain.readable[0]) == [1, 2, 3, 4, 5])
        #expect(bytes(of: chain.readable[1]) == [6, 7])
        chain.writable[0].iov_base!.storeBytes(of: 0xAB, as: UInt8.self)

        #expect(try !queue.pop(into: chain))
        queue.complete(head: head, length: 1)
        #expect(driver.takeUsed() == [.init(head: head, length: 1)])
        #expect(driver.read(reply, length: 1) == [0xAB])
    }

    @Test("an indirect table is followed, and its buffers are the chain's")
    func indirectChain() throws {
        let driver = try VirtqueueDriver(size: 8)
        var queue = try deviceQueue(driver)
        let a = driver.write(Array(repeating: 7, count: 40))
        let b = driver.allocate(100)
        let c = driver.allocate(28)
        let head = driver.makeIndirectChain([
            .init(address: a, length: 40, writable: false),
            .init(address: b, length: 100, writable: true),
            .init(address: c, length: 28, writable: true),
        ])
        driver.publish(head)
        let chain = DescriptorChain(capacity: 8)
        #expect(try queue.pop(into: chain))
        #expect(chain.readableCount == 1 && chain.writableCount == 2)
        #expect(chain.readableLength == 40 && chain.writableLength == 128)
        #expect(bytes(of: chain.readable[0]) == Array(repeating: 7, count: 40))
    }

    @Test("ring indexes wrap around at 65535", arguments: [UInt16(65533), 65535, 0])
    func wrapAround(start: UInt16) throws {
        let driver = try VirtqueueDriver(size: 4, startIndex: start)
        var queue = try deviceQueue(driver)
        let chain = DescriptorChain(capacity: 4)
        var seen: [UInt16] = []
        for round in 0..<3 {
            var heads: [UInt16] = []
            for i in 0..<4 {
                let buffer = driver.write([UInt8(round * 4 + i)])
                let head = driver.makeChain([.init(address: buffer, length: 1, writable: false)])
                driver.publish(head)
                heads.append(head)
            }
            while try queue.pop(into: chain) {
                seen.append(bytes(of: chain.readable[0])[0].toUInt16)
                queue.complete(head: chain.head, length: 0)
            }
            #expect(driver.takeUsed().map(\.head) == heads)
            driver.resetBuffers()
        }
        #expect(seen == (0..<12).map { UInt16($0) })
        #expect(queue.nextAvailable == start &+ 12)
        #expect(driver.usedIndex == start &+ 12)
    }

    @Test("EVENT_IDX: interrupts only when the guest's used_event is crossed")
    func eventIndex() throws {
        let driver = try VirtqueueDriver(size: 8)
        var queue = try deviceQueue(driver, eventIndex: true)
        let chain = DescriptorChain(capacity: 4)
        func roundTrip() throws {
            let head = driver.makeChain([.init(address: driver.allocate(8), length: 8, writable: true)])
            driver.publish(head)
            #expect(try queue.pop(into: chain))
            queue.complete(head: chain.head, length: 0)
            _ = driver.takeUsed()
        }
        try roundTrip()
        do { let signal = queue.needsNotification(); #expect(signal) }  // the first completion always signals
        driver.setUsedEvent(2)  // the guest wants an interrupt once used.idx passes 2, i.e. reaches 3
        try roundTrip()  // used.idx = 2
        do { let signal = queue.needsNotification(); #expect(!signal) }
        try roundTrip()  // used.idx = 3
        do { let signal = queue.needsNotification(); #expect(signal) }
        try roundTrip()  // 4: used_event 2 is behind us
        do { let signal = queue.needsNotification(); #expect(!signal) }

        // enableNotification publishes avail_event and reports buffers that slipped in.
        #expect(!queue.enableNotification())
        #expect(driver.availableEvent == queue.nextAvailable)
        driver.publish(driver.makeChain([.init(address: driver.allocate(8), length: 8, writable: true)]))
        #expect(queue.enableNotification())
    }

    @Test("without EVENT_IDX the avail NO_INTERRUPT flag suppresses interrupts")
    func noInterruptFlag() throws {
        let driver = try VirtqueueDriver(size: 8)
        var queue = try deviceQueue(driver)
        do { let signal = queue.needsNotification(); #expect(signal) }
        driver.setAvailableFlags(1)
        do { let signal = queue.needsNotification(); #expect(!signal) }
    }

    @Test("a buffer outside guest memory is rejected, and the head is still returned")
    func outsideMemory() throws {
        let driver = try VirtqueueDriver(size: 8, memorySize: 1 << 20)
        var queue = try deviceQueue(driver)
        let chain = DescriptorChain(capacity: 4)
        let end = driver.guestBase + UInt64(1 << 20)
        let cases: [(UInt64, UInt32)] = [
            (end, 1),  // just past the end
            (end - 4, 8),  // straddles the end
            (0, 16),  // below the region
            (UInt64.max - 3, 8),  // wraps the address space
        ]
        for (address, length) in cases {
            let head = driver.makeChain([.init(address: GuestAddress(address), length: length, writable: false)])
            driver.publish(head)
            #expect(throws: VirtqueueError.invalidChain(head: head, reason: .bufferNotInMemory)) {
                try queue.pop(into: chain)
            }
            queue.complete(head: head, length: 0)
            _ = driver.takeUsed()
        }
    }

    @Test("a looping chain stops at the queue size")
    func loopingChain() throws {
        let driver = try VirtqueueDriver(size: 8)
        var queue = try deviceQueue(driver)
        let buffer = driver.allocate(8)
        driver.setDescriptor(index: 3, address: buffer.rawValue, length: 8, flags: 1, next: 4)
        driver.setDescriptor(index: 4, address: buffer.rawValue, length: 8, flags: 1, next: 3)
        driver.publish(3)
        let chain = DescriptorChain(capacity: 64)
        #expect(throws: VirtqueueError.invalidChain(head: 3, reason: .tooLong)) { try queue.pop(into: chain) }
    }

    @Test("a looping indirect table stops at its own length")
    func loopingIndirect() throws {
        let driver = try VirtqueueDriver(size: 8)
        var queue = try deviceQueue(driver)
        let table = driver.allocate(32, alignment: 16)
        let buffer = driver.allocate(8)
        driver.setDescriptor(table: table.rawValue, index: 0, address: buffer.rawValue, length: 8, flags: 1, next: 1)
        driver.setDescriptor(table: table.rawValue, index: 1, address: buffer.rawValue, length: 8, flags: 1, next: 0)
        driver.setDescriptor(index: 0, address: table.rawValue, length: 32, flags: 4, next: 0)
        driver.publish(0)
        let chain = DescriptorChain(capacity: 64)
        #expect(throws: VirtqueueError.invalidChain(head: 0, reason: .tooLong)) { try queue.pop(into: chain) }
    }

    @Test("malformed chains are named")
    func malformed() throws {
        let driver = try VirtqueueDriver(size: 8)
        var queue = try deviceQueue(driver)
        let chain = DescriptorChain(capacity: 2)
        let buffer = driver.allocate(64)
        let table = driver.allocate(32, alignment: 16)
        let b = buffer.rawValue

        // next out of range
        driver.setDescriptor(index: 0, address: b, length: 8, flags: 1, next: 9)
        driver.publish(0)
        #expect(throws: VirtqueueError.invalidChain(head: 0, reason: .nextOutOfRange)) { try queue.pop(into: chain) }
        // readable after writable
        driver.setDescriptor(index: 1, address: b, length: 8, flags: 2 | 1, next: 2)
        driver.setDescriptor(index: 2, address: b, length: 8, flags: 0, next: 0)
        driver.publish(1)
        #expect(throws: VirtqueueError.invalidChain(head: 1, reason: .readableAfterWritable)) { try queue.pop(into: chain) }
        // nested indirect
        driver.setDescriptor(table: table.rawValue, index: 0, address: table.rawValue, length: 32, flags: 4, next: 0)
        driver.setDescriptor(index: 3, address: table.rawValue, length: 32, flags: 4, next: 0)
        driver.publish(3)
        #expect(throws: VirtqueueError.invalidChain(head: 3, reason: .nestedIndirect)) { try queue.pop(into: chain) }
        // indirect length not a multiple of 16
        driver.setDescriptor(index: 4, address: table.rawValue, length: 20, flags: 4, next: 0)
        driver.publish(4)
        #expect(throws: VirtqueueError.invalidChain(head: 4, reason: .badIndirectLength)) { try queue.pop(into: chain) }
        // more buffers than the worker has room for
        driver.setDescriptor(index: 5, address: b, length: 8, flags: 1, next: 6)
        driver.setDescriptor(index: 6, address: b, length: 8, flags: 1, next: 7)
        driver.setDescriptor(index: 7, address: b, length: 8, flags: 0, next: 0)
        driver.publish(5)
        #expect(throws: VirtqueueError.invalidChain(head: 5, reason: .tooManySegments)) { try queue.pop(into: chain) }
    }

    @Test("a head index past the table, or an avail.idx too far ahead, breaks the ring")
    func brokenRing() throws {
        let driver = try VirtqueueDriver(size: 8)
        var queue = try deviceQueue(driver)
        let chain = DescriptorChain(capacity: 4)
        driver.publish(8)
        #expect(throws: VirtqueueError.headOutOfRange(8)) { try queue.pop(into: chain) }

        let other = try VirtqueueDriver(size: 8)
        var second = try deviceQueue(other)
        other.setAvailableIndex(9)
        #expect(throws: VirtqueueError.availableIndexOutOfRange(available: 9, next: 0)) { try second.pop(into: chain) }
    }

    @Test("rings outside guest memory are refused")
    func ringOutsideMemory() throws {
        let driver = try VirtqueueDriver(size: 8, memorySize: 1 << 20)
        #expect(throws: VirtqueueError.ringNotInMemory) {
            try SplitQueue(
                size: 8, descriptorsAt: driver.userBase + (1 << 20) - 16, availableAt: driver.userBase,
                usedAt: driver.userBase + 4096, memory: driver.memory, eventIndex: false, nextAvailable: 0)
        }
        #expect(throws: VirtqueueError.ringNotInMemory) {
            // guest-physical, not front-end virtual, addresses: the mix-up a backend must not make
            try SplitQueue(
                size: 8, descriptorsAt: driver.descriptorsAddress, availableAt: driver.availableAddress,
                usedAt: driver.usedAddress, memory: driver.memory, eventIndex: false, nextAvailable: 0)
        }
    }
}

extension UInt8 {
    var toUInt16: UInt16 { UInt16(self) }
}
