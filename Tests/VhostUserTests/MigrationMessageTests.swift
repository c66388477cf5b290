// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc
import GuestMemory
import Synchronization
import Testing
import VFSSystem
import VhostUser
import Virtqueue
import VirtqueueDriver

/// Device state that is whatever was last loaded, saved back as it is.
final class EchoState: DeviceStateTransfer {
    let state = Mutex<[UInt8]>([])
    let failSave = Atomic<Bool>(false)
    var maxStateSize: Int { 1 << 20 }

    func saveState() throws(DeviceStateError) -> [UInt8] {
        if failSave.load(ordering: .relaxed) { throw DeviceStateError("refused") }
        return state.withLock { $0 }
    }

    func loadState(_ bytes: [UInt8]) throws(DeviceStateError) {
        guard bytes.first != 0xee else { throw DeviceStateError("damaged") }
        state.withLock { $0 = bytes }
    }
}

extension TestFrontend {
    /// SET_DEVICE_STATE_FD with `fd` attached; the reply.
    func setDeviceStateFD(direction: UInt32, phase: UInt32 = 0, fd: CInt) throws -> UInt64 {
        var payload = payloadBytes(of: direction.littleEndian)
        payload += payloadBytes(of: phase.littleEndian)
        try send(.setDeviceStateFD, payload: payload, fds: [fd])
        return try reply(to: .setDeviceStateFD).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }
}

func makePipe() -> (read: CInt, write: CInt) {
    // A write into a pipe whose reader went is EPIPE here, as in the daemon, not the end of the test process.
    ProcessSettings.ignoreBrokenPipe()
    var fds: [CInt] = [0, 0]
    precondition(pipe(&fds) == 0)
    return (fds[0], fds[1])
}

func readAll(_ fd: CInt) -> [UInt8] {
    var all: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { return all }
        all += chunk[0..<n]
    }
}

@Suite("vhost-user back-end: migration")
struct MigrationMessageTests {
    @Test("with LOG_ALL on, every reply byte and the used ring are marked in the log, after they are written; off, nothing is")
    func dirtyLogging() throws {
        let frontend = try TestFrontend()
        #expect(try frontend.u64(.getFeatures) & VirtioFeatures.logAll != 0)
        #expect(try frontend.u64(.getProtocolFeatures) & VhostUserProtocolFeatures.logSharedMemory != 0)
        try frontend.negotiate()
        let driver = try VirtqueueDriver(size: 64)
        let kick = try EventFD()
        let call = try EventFD()
        try frontend.startQueue(1, driver: driver, kick: kick, call: call)

        // The log covers the driver's memory from guest address 0, one bit per 4 KiB page.
        let pages = (driver.guestBase + UInt64(driver.mapping.length)) / 4096
        let logFile = try makeMemoryFile(name: "log", size: Int((pages + 7) / 8))
        let logMapping = try MemoryMapping(fd: logFile.borrowed, length: Int((pages + 7) / 8))
        let log = try DirtyLog(mapping: logMapping, offset: 0, size: (pages + 7) / 8)
        var logPayload = payloadBytes(of: UInt64((pages + 7) / 8).littleEndian)
        logPayload += payloadBytes(of: UInt64(0))
        try frontend.send(.setLogBase, payload: logPayload, fds: [logFile.rawValue])
        #expect(try frontend.reply(to: .setLogBase) == payloadBytes(of: UInt64(0)))

        func roundTrip(replyPages: Int) throws -> (request: GuestAddress, reply: GuestAddress) {
            _ = driver.allocate(1, alignment: 4096)
            let request = driver.write(Array("logged bytes".utf8))
            let reply = driver.allocate(4096 * replyPages, alignment: 4096)
            let head = driver.makeChain([
                .init(address: request, length: 12, writable: false),
                .init(address: reply, length: UInt32(4096 * replyPages), writable: true),
            ])
            driver.publish(head)
            kick.signal()
            var used: [VirtqueueDriver.Completion] = []
            for _ in 0..<50 where used.isEmpty {
                _ = waitForCall(call)
                _ = call.drain()
                used = driver.takeUsed()
            }
            #expect(used.map(\.length) == [12])
            return (request, reply)
        }
        // Not logging yet (LOG_ALL off): nothing marked.
        let before = try roundTrip(replyPages: 1)
        #expect(!log.isMarked(before.reply.rawValue))
        #expect(!log.isMarked(driver.usedAddress))

        // LOG_ALL on (acknowledged only once every queue logs), and the used ring's flag with its log address.
        let features = VirtioFeatures.version1 | VirtioFeatures.protocolFeatures | VirtioFeatures.ringIndirectDescriptors
            | VirtioFeatures.ringEventIndex
        try frontend.send(.setFeatures, payload: payloadBytes(of: features | VirtioFeatures.logAll), needReply: true)
        #expect(try frontend.reply(to: .setFeatures) == payloadBytes(of: UInt64(0)))
        try frontend.send(.setVringAddr, payload: payloadBytes(of: cvfs_vhost_vring_addr(
            index: 1, flags: VringAddressFlags.log, descriptor: driver.userAddress(driver.descriptorsAddress),
            used: driver.userAddress(driver.usedAddress), available: driver.userAddress(driver.availableAddress),
            log: driver.usedAddress)), needReply: true)
        #expect(try frontend.reply(to: .setVringAddr) == payloadBytes(of: UInt64(0)))
        let during = try roundTrip(replyPages: 2)
        #expect(log.isMarked(during.reply.rawValue))
        #expect(!log.isMarked(during.reply.rawValue + 4096), "12 bytes written: the reply's second page is untouched")
        #expect(!log.isMarked(during.request.rawValue), "the request is only read")
        #expect(log.isMarked(driver.usedAddress))

        // LOG_ALL off again: a later reply is not marked.
        try frontend.send(.setFeatures, payload: payloadBytes(of: features), needReply: true)
        #expect(try frontend.reply(to: .setFeatures) == payloadBytes(of: UInt64(0)))
        let after = try roundTrip(replyPages: 1)
        #expect(!log.isMarked(after.reply.rawValue))
        #expect(frontend.finish() == .some(nil))
    }

    @Test("SET_LOG_BASE without LOG_SHMFD, a log outside its file or without one ends in an error, not a mapping")
    func badLogBase() throws {
        let small = try makeMemoryFile(name: "log", size: 4096)
        var payload = payloadBytes(of: UInt64(8192).littleEndian)
        payload += payloadBytes(of: UInt64(0))
        for (agree, fds) in [(false, [small.rawValue]), (true, [small.rawValue]), (true, [])] {
            let frontend = try TestFrontend()
            if agree { try frontend.negotiate() }
            try frontend.send(.setLogBase, payload: payload, fds: fds)
            guard case .some(.some) = frontend.finish() else { Issue.record("accepted"); continue }
        }
    }

    @Test("the device state is saved into a pipe and loaded from one, then checked; a device without one does not offer it")
    func deviceState() throws {
        #expect(try TestFrontend().u64(.getProtocolFeatures) & VhostUserProtocolFeatures.deviceState == 0)
        let source = EchoState()
        source.state.withLock { $0 = Array(0..<200).map { UInt8($0) } + [UInt8](repeating: 7, count: 200_000) }
        let frontend = try TestFrontend(deviceState: source)
        #expect(try frontend.u64(.getProtocolFeatures) & VhostUserProtocolFeatures.deviceState != 0)
        try frontend.negotiate()
        // Save: the back-end writes the whole state (more than a pipe holds) and closes its end.
        var pipe = makePipe()
        #expect(try frontend.setDeviceStateFD(direction: 0, fd: pipe.write) == 0x100)
        close(pipe.write)
        let saved = readAll(pipe.read)
        close(pipe.read)
        #expect(saved == source.state.withLock { $0 })
        #expect(try frontend.u64(.checkDeviceState) == 0)
        #expect(frontend.finish() == .some(nil))

        // Load, on another back-end.
        let destination = EchoState()
        let other = try TestFrontend(deviceState: destination)
        try other.negotiate()
        pipe = makePipe()
        #expect(try other.setDeviceStateFD(direction: 1, fd: pipe.read) == 0x100)
        close(pipe.read)
        saved.withUnsafeBytes { var done = 0; while done < $0.count { done += Glibc.write(pipe.write, $0.baseAddress! + done, $0.count - done) } }
        close(pipe.write)
        #expect(try other.u64(.checkDeviceState) == 0)
        #expect(destination.state.withLock { $0 } == saved)
        #expect(other.finish() == .some(nil))
    }

    @Test("device state: a bad phase or direction, a running queue, a file for a pipe, a refused save, a damaged or oversized load, a check without a transfer")
    func deviceStateErrors() throws {
        let state = EchoState()
        let frontend = try TestFrontend(deviceState: state)
        try frontend.negotiate()
        #expect(try frontend.u64(.checkDeviceState) == 1)
        var pipe = makePipe()
        #expect(try frontend.setDeviceStateFD(direction: 0, phase: 1, fd: pipe.write) == 0x101)
        #expect(try frontend.setDeviceStateFD(direction: 2, fd: pipe.write) == 0x101)
        let file = try makeMemoryFile(name: "not-a-pipe", size: 4096)
        #expect(try frontend.setDeviceStateFD(direction: 0, fd: file.rawValue) == 0x101)
        state.failSave.store(true, ordering: .relaxed)
        #expect(try frontend.setDeviceStateFD(direction: 0, fd: pipe.write) == 0x101)
        state.failSave.store(false, ordering: .relaxed)
        close(pipe.write)
        close(pipe.read)
        // Damaged: the device refuses it at CHECK_DEVICE_STATE.
        pipe = makePipe()
        #expect(try frontend.setDeviceStateFD(direction: 1, fd: pipe.read) == 0x100)
        close(pipe.read)
        _ = [UInt8(0xee), 1, 2].withUnsafeBytes { Glibc.write(pipe.write, $0.baseAddress, 3) }
        close(pipe.write)
        #expect(try frontend.u64(.checkDeviceState) == 1)
        // Longer than the device takes: refused without reading it all.
        pipe = makePipe()
        #expect(try frontend.setDeviceStateFD(direction: 1, fd: pipe.read) == 0x100)
        close(pipe.read)
        let writer = try SystemThread(name: "flood") { [write = pipe.write] in
            let chunk = [UInt8](repeating: 1, count: 65536)
            for _ in 0..<40 { if chunk.withUnsafeBytes({ Glibc.write(write, $0.baseAddress, $0.count) }) < 0 { break } }
            close(write)
        }
        #expect(try frontend.u64(.checkDeviceState) == 1)
        writer.join()
        // A running queue: the device is not suspended.
        let driver = try VirtqueueDriver(size: 16)
        let kick = try EventFD()
        let call = try EventFD()
        try frontend.startQueue(1, driver: driver, kick: kick, call: call)
        pipe = makePipe()
        #expect(try frontend.setDeviceStateFD(direction: 0, fd: pipe.write) == 0x101)
        close(pipe.write)
        close(pipe.read)
        #expect(frontend.finish() == .some(nil))
    }
}
