// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc
import GuestMemory
import Logging
import Synchronization
import Testing
import VFSSystem
import VhostUser
import Virtqueue
import VirtqueueDriver

/// A device whose queues answer each request with its bytes reversed.
final class ReversingBackend: VhostUserBackend {
    let resets = Atomic<Int>(0)
    let deviceState: (any DeviceStateTransfer)?
    init(deviceState: (any DeviceStateTransfer)? = nil) { self.deviceState = deviceState }
    var maxQueues: Int { 3 }
    var maxQueueSize: Int { 1024 }
    var deviceFeatures: UInt64 { 0 }
    func makeRequestHandler(queue index: Int, completions: DeferredCompletions) -> any VringRequestHandler { Reverser() }
    func reset() { resets.add(1, ordering: .relaxed) }

    final class Reverser: VringRequestHandler {
        func handle(_ chain: DescriptorChain) -> UInt32? {
            var bytes: [UInt8] = []
            for v in chain.readableBuffers { bytes += UnsafeRawBufferPointer(start: v.iov_base, count: v.iov_len) }
            bytes.reverse()
            var written = 0
            for v in chain.writableBuffers where written < bytes.count {
                let n = min(v.iov_len, bytes.count - written)
                bytes[written..<written + n].withUnsafeBytes { v.iov_base!.copyMemory(from: $0.baseAddress!, byteCount: n) }
                written += n
            }
            return UInt32(written)
        }
    }
}

/// Plays the front-end (QEMU) against a `VhostUserHandler` serving the other end of a socketpair.
final class TestFrontend {
    let connection: VhostUserConnection
    let serverThread: SystemThread
    /// How `serve` ended: nil while it runs, .some(nil) for a clean end, .some(error) for a protocol error.
    final class Outcome: Sendable {
        let value = Mutex<VhostUserError??>(nil)
    }
    let result = Outcome()
    let backend: ReversingBackend

    init(deviceState: (any DeviceStateTransfer)? = nil) throws {
        backend = ReversingBackend(deviceState: deviceState)
        let pair = try UnixSocket.pair()
        connection = VhostUserConnection(socket: pair.first)
        let serverSide = pair.second.release()
        let backend = self.backend
        let result = self.result
        serverThread = try SystemThread(name: "test-backend") {
            let connection = VhostUserConnection(socket: OwnedFD(taking: serverSide))
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let handler = VhostUserHandler(backend: backend, logger: logger)
            do throws(VhostUserError) {
                try handler.serve(connection)
                result.value.withLock { $0 = .some(nil) }
            } catch {
                result.value.withLock { $0 = .some(error) }
            }
        }
    }

    func send(_ request: VhostUserRequest, payload: [UInt8] = [], fds: [CInt] = [], needReply: Bool = false) throws {
        try connection.send(
            request: request.rawValue, flags: VhostUserFlags.version | (needReply ? VhostUserFlags.needReply : 0),
            payload: payload, fds: fds)
    }

    func sendRaw(request: UInt32, flags: UInt32 = VhostUserFlags.version, payload: [UInt8] = []) throws {
        try connection.send(request: request, flags: flags, payload: payload)
    }

    /// Reads one reply and checks it answers `request`.
    func reply(to request: VhostUserRequest) throws -> [UInt8] {
        guard let message = try connection.receive() else { throw VhostUserError.truncatedMessage }
        #expect(message.request == request.rawValue)
        #expect(message.flags & VhostUserFlags.reply != 0)
        return message.payload
    }

    func u64(_ request: VhostUserRequest) throws -> UInt64 {
        try send(request)
        let bytes = try reply(to: request)
        return bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }

    /// Closes our end and waits for the back-end to finish; returns how it ended.
    func finish() -> VhostUserError?? {
        UnixSocket.shutdown(connection.socket.borrowed)
        serverThread.join()
        return result.value.withLock { $0 }
    }

    /// Negotiates features and protocol features as QEMU does.
    func negotiate(eventIndex: Bool = true, packed: Bool = false) throws {
        let features = try u64(.getFeatures)
        #expect(features & VirtioFeatures.version1 != 0)
        #expect(features & VirtioFeatures.protocolFeatures != 0)
        let offered = try u64(.getProtocolFeatures)
        #expect(offered & VhostUserProtocolFeatures.replyAck != 0)
        #expect(offered & VhostUserProtocolFeatures.multipleQueues != 0)
        #expect(offered & VhostUserProtocolFeatures.config == 0)
        try send(.setProtocolFeatures, payload: payloadBytes(of: offered))
        try send(.setOwner)
        var wanted = VirtioFeatures.version1 | VirtioFeatures.protocolFeatures | VirtioFeatures.ringIndirectDescriptors
        if eventIndex { wanted |= VirtioFeatures.ringEventIndex }
        if packed {
            #expect(features & VirtioFeatures.ringPacked != 0)
            wanted |= VirtioFeatures.ringPacked
        }
        try send(.setFeatures, payload: payloadBytes(of: wanted))
    }

    /// Sends the driver's memory as a one-region memory table, and configures and starts queue `index`.
    func startQueue(_ index: UInt32, driver: VirtqueueDriver, kick: borrowing EventFD, call: borrowing EventFD) throws {
        var table = cvfs_vhost_memory()
        table.num_regions = 1
        table.regions.0 = cvfs_vhost_memory_region(
            guest_address: driver.guestBase, size: UInt64(driver.mapping.length), user_address: driver.userBase, mmap_offset: 0)
        try send(.setMemTable, payload: Array(payloadBytes(of: table).prefix(8 + 32)), fds: [driver.memoryFile.rawValue], needReply: true)
        #expect(try reply(to: .setMemTable) == payloadBytes(of: UInt64(0)))
        try send(.setVringNum, payload: payloadBytes(of: cvfs_vhost_vring_state(index: index, num: UInt32(driver.size))))
        let base = driver.packed ? driver.packedState : UInt32(driver.availableIndex)
        try send(.setVringBase, payload: payloadBytes(of: cvfs_vhost_vring_state(index: index, num: base)))
        try send(.setVringAddr, payload: payloadBytes(of: cvfs_vhost_vring_addr(
            index: index, flags: 0, descriptor: driver.userAddress(driver.descriptorsAddress),
            used: driver.userAddress(driver.usedAddress), available: driver.userAddress(driver.availableAddress), log: 0)))
        try send(.setVringCall, payload: payloadBytes(of: UInt64(index)), fds: [call.fd.rawValue])
        try send(.setVringKick, payload: payloadBytes(of: UInt64(index)), fds: [kick.fd.rawValue])
        try send(.setVringEnable, payload: payloadBytes(of: cvfs_vhost_vring_state(index: index, num: 1)))
    }
}

/// Waits (bounded) until the call eventfd fires.
func waitForCall(_ call: borrowing EventFD) -> Bool {
    var pfd = pollfd(fd: call.fd.rawValue, events: Int16(POLLIN), revents: 0)
    return poll(&pfd, 1, 5000) == 1
}

@Suite("vhost-user back-end")
struct VhostUserHandlerTests {
    @Test("features, protocol features and queue count are offered as QEMU expects")
    func negotiation() throws {
        let frontend = try TestFrontend()
        try frontend.negotiate()
        #expect(try frontend.u64(.getQueueNum) == 3)
        #expect(try frontend.u64(.getMaxMemSlots) == 509)
        #expect(frontend.finish() == .some(nil))
    }

    @Test("a request travels through a started queue and is answered, with one interrupt")
    func requestRoundTrip() throws {
        let frontend = try TestFrontend()
        try frontend.negotiate()
        let driver = try VirtqueueDriver(size: 64)
        let kick = try EventFD()
        let call = try EventFD()
        try frontend.startQueue(1, driver: driver, kick: kick, call: call)

        let request = driver.write(Array("hello, vhost".utf8))
        let reply = driver.allocate(64)
        let head = driver.makeChain([
            .init(address: request, length: 12, writable: false), .init(address: reply, length: 64, writable: true),
        ])
        driver.publish(head)
        kick.signal()
        do { let called = waitForCall(call); #expect(called) }
        #expect(driver.takeUsed() == [.init(head: head, length: 12)])
        #expect(driver.read(reply, length: 12) == Array("tsohv ,olleh".utf8))

        // GET_VRING_BASE stops the ring and reports where it stopped.
        try frontend.send(.getVringBase, payload: payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: 0)))
        let state = try frontend.reply(to: .getVringBase).withUnsafeBytes { $0.loadUnaligned(as: cvfs_vhost_vring_state.self) }
        #expect(state.index == 1 && state.num == 1)
        #expect(frontend.finish() == .some(nil))
    }

    @Test("packed rings: a queue of any size serves requests; GET_VRING_BASE gives both positions and wrap counters, a restart continues from them")
    func packedRing() throws {
        let frontend = try TestFrontend()
        try frontend.negotiate(packed: true)
        let driver = try VirtqueueDriver(size: 5, packed: true)
        let kick = try EventFD()
        let call = try EventFD()
        try frontend.startQueue(1, driver: driver, kick: kick, call: call)
        func roundTrip(_ text: String) {
            let request = driver.write(Array(text.utf8))
            let reply = driver.allocate(64)
            let id = driver.makeChain([
                .init(address: request, length: UInt32(text.utf8.count), writable: false),
                .init(address: reply, length: 64, writable: true),
            ])
            driver.publish(id)
            kick.signal()
            do { let called = waitForCall(call); #expect(called) }
            call.drain()
            #expect(driver.takeUsed() == [.init(head: id, length: UInt32(text.utf8.count))])
            #expect(driver.read(reply, length: text.utf8.count) == Array(String(text.reversed()).utf8))
        }
        // Three requests of two positions each on a ring of five: the third wraps.
        for text in ["one", "two", "three"] { roundTrip(text) }
        try frontend.send(.getVringBase, payload: payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: 0)))
        let state = try frontend.reply(to: .getVringBase).withUnsafeBytes { $0.loadUnaligned(as: cvfs_vhost_vring_state.self) }
        #expect(state.index == 1 && state.num == 0x0001_0001)  // position 1 of the second lap (wrap counters 0), both
        #expect(state.num == driver.packedState)
        try frontend.send(.setVringBase, payload: payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: state.num)))
        try frontend.send(.setVringCall, payload: payloadBytes(of: UInt64(1)), fds: [call.fd.rawValue])
        try frontend.send(.setVringKick, payload: payloadBytes(of: UInt64(1)), fds: [kick.fd.rawValue])
        try frontend.send(.setVringEnable, payload: payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: 1)))
        roundTrip("four")
        #expect(frontend.finish() == .some(nil))
    }

    @Test("a split ring's size must be a power of two, a packed ring's not; a packed ring's event structures are on 4 bytes")
    func packedSizesAndAlignment() throws {
        func outcome(packed: Bool, _ send: (TestFrontend) throws -> Void) throws -> VhostUserError?? {
            let frontend = try TestFrontend()
            try frontend.negotiate(packed: packed)
            try send(frontend)
            _ = try? frontend.u64(.getFeatures)
            return frontend.finish()
        }
        let num = { (f: TestFrontend) in
            try f.send(.setVringNum, payload: payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: 100)))
        }
        #expect(try outcome(packed: true, num) == .some(nil))
        #expect(try outcome(packed: false, num) != .some(nil))
        let address = { (f: TestFrontend) in
            try f.send(.setVringAddr, payload: payloadBytes(of: cvfs_vhost_vring_addr(
                index: 1, flags: 0, descriptor: 0x1000, used: 0x2000, available: 0x3002, log: 0)))
        }
        #expect(try outcome(packed: false, address) == .some(nil))
        #expect(try outcome(packed: true, address) != .some(nil))
    }

    @Test("a long batch signals the guest along the way, every 16 requests, and with EVENT_IDX only as used_event asks",
          arguments: [(false, UInt16(0), UInt64(3)), (true, 35, 2)])
    func signalsWithinBatch(eventIndex: Bool, usedEvent: UInt16, signals: UInt64) throws {
        let frontend = try TestFrontend()
        try frontend.negotiate(eventIndex: eventIndex)
        let driver = try VirtqueueDriver(size: 128)
        let kick = try EventFD()
        let call = try EventFD()
        try frontend.startQueue(1, driver: driver, kick: kick, call: call)
        // 40 requests made available at once, then one kick: the worker serves them as one batch (published one
        // by one, some could be taken before the rest, when SET_VRING_ENABLE wakes the worker).
        driver.setUsedEvent(usedEvent)
        let heads = (0..<40).map { i in
            driver.makeChain([
                .init(address: driver.write([UInt8(i)]), length: 1, writable: false),
                .init(address: driver.allocate(8), length: 8, writable: true),
            ])
        }
        driver.publish(heads)
        kick.signal()
        for _ in 0..<500 where driver.usedIndex != 40 { usleep(10_000) }
        #expect(driver.usedIndex == 40)
        // GET_VRING_BASE joins the worker: every signal it sent is in the counter.
        try frontend.send(.getVringBase, payload: payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: 0)))
        _ = try frontend.reply(to: .getVringBase)
        var count: UInt64 = 0
        #expect(read(call.fd.rawValue, &count, 8) == 8)
        // Without EVENT_IDX: at 16, 32 and the end. With used_event 35: at 16 (the first check always signals),
        // not at 32 (35 not yet passed), and at 40 (35 passed since 32).
        #expect(count == signals)
        #expect(frontend.finish() == .some(nil))
    }

    @Test("a disabled ring is not served until SET_VRING_ENABLE")
    func enable() throws {
        let frontend = try TestFrontend()
        try frontend.negotiate()
        let driver = try VirtqueueDriver(size: 16)
        let kick = try EventFD()
        let call = try EventFD()
        try frontend.startQueue(2, driver: driver, kick: kick, call: call)
        try frontend.send(.setVringEnable, payload: payloadBytes(of: cvfs_vhost_vring_state(index: 2, num: 0)))
        // A round trip on the control socket: the back-end has applied the disable before the kick.
        _ = try frontend.u64(.getFeatures)
        let buffer = driver.write([1, 2, 3])
        driver.publish(driver.makeChain([.init(address: buffer, length: 3, writable: false)]))
        kick.signal()
        usleep(50_000)
        #expect(driver.usedIndex == 0)
        try frontend.send(.setVringEnable, payload: payloadBytes(of: cvfs_vhost_vring_state(index: 2, num: 1)))
        do { let called = waitForCall(call); #expect(called) }
        #expect(driver.usedIndex == 1)
        #expect(frontend.finish() == .some(nil))
    }

    @Test("REPLY_ACK reports failure of a request that asked for it, and the connection goes on")
    func replyAckFailure() throws {
        let frontend = try TestFrontend()
        try frontend.negotiate()
        // A ring size that is not a power of two.
        try frontend.send(.setVringNum, payload: payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: 100)), needReply: true)
        #expect(try frontend.reply(to: .setVringNum) == payloadBytes(of: UInt64(1)))
        #expect(try frontend.u64(.getQueueNum) == 3)
        #expect(frontend.finish() == .some(nil))
    }

    @Test("malformed messages end the connection with a named error")
    func malformed() throws {
        func ending(_ send: (TestFrontend) throws -> Void) throws -> VhostUserError?? {
            let frontend = try TestFrontend()
            try send(frontend)
            return frontend.finish()
        }
        #expect(try ending { try $0.sendRaw(request: 999) } == .some(.unknownRequest(999)))
        #expect(try ending { try $0.sendRaw(request: 1, flags: 2) } == .some(.badVersion(flags: 2)))
        #expect(try ending { try $0.sendRaw(request: 2, payload: [1, 2, 3]) } == .some(.badPayloadSize(.setFeatures, 3)))
        #expect(try ending {
            try $0.send(.setVringNum, payload: payloadBytes(of: cvfs_vhost_vring_state(index: 7, num: 8)))
        } == .some(.badQueueIndex(.setVringNum, 7)))
        #expect(try ending {
            // SET_VRING_KICK that says it carries an fd but carries none
            try $0.send(.setVringKick, payload: payloadBytes(of: UInt64(1)))
        } == .some(.badDescriptorCount(.setVringKick, 0)))
        #expect(try ending {
            // a memory table that claims 9 regions
            try $0.send(.setMemTable, payload: payloadBytes(of: UInt32(9)) + [UInt8](repeating: 0, count: 4 + 9 * 32))
        } == .some(.badPayloadSize(.setMemTable, 8 + 9 * 32)))
        #expect(try ending {
            // an oversized payload header
            try $0.connection.send(request: 1, flags: 1, payload: [UInt8](repeating: 0, count: 5000))
        } == .some(.payloadTooLarge(5000)))
        #expect(try ending {
            try $0.send(.setFeatures, payload: payloadBytes(of: UInt64(1) << 40))
        } == .some(.invalid(.setFeatures, "features 0x10000000000 were not offered")))
    }

    @Test("a header cut short by the front-end is a truncated message, not a crash")
    func truncatedHeader() throws {
        let frontend = try TestFrontend()
        _ = try [UInt8](repeating: 1, count: 5).withUnsafeBytes { try UnixSocket.send(frontend.connection.socket.borrowed, $0) }
        #expect(frontend.finish() == .some(.truncatedMessage))
    }

    @Test("rings outside the memory table are refused when the queue starts")
    func ringsOutsideMemory() throws {
        let frontend = try TestFrontend()
        try frontend.negotiate()
        let driver = try VirtqueueDriver(size: 16)
        let kick = try EventFD()
        try frontend.send(.setVringNum, payload: payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: 16)))
        try frontend.send(.setVringAddr, payload: payloadBytes(of: cvfs_vhost_vring_addr(
            index: 1, flags: 0, descriptor: driver.userBase, used: driver.userBase + 4096, available: driver.userBase + 8192, log: 0)))
        // no memory table yet
        try frontend.send(.setVringKick, payload: payloadBytes(of: UInt64(1)), fds: [kick.fd.rawValue], needReply: true)
        #expect(try frontend.reply(to: .setVringKick) == payloadBytes(of: UInt64(1)))
        #expect(frontend.finish() == .some(nil))
    }

    @Test("RESET_OWNER stops the queues and resets the device")
    func resetOwner() throws {
        let frontend = try TestFrontend()
        try frontend.negotiate()
        let driver = try VirtqueueDriver(size: 16)
        let kick = try EventFD()
        let call = try EventFD()
        try frontend.startQueue(1, driver: driver, kick: kick, call: call)
        try frontend.send(.resetOwner, needReply: true)
        #expect(try frontend.reply(to: .resetOwner) == payloadBytes(of: UInt64(0)))
        #expect(frontend.backend.resets.load(ordering: .relaxed) == 1)
        #expect(frontend.finish() == .some(nil))
    }
}
