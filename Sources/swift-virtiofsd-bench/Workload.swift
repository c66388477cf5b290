// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import Glibc
import GuestMemory
import Synchronization
import VFSSystem
import VirtqueueDriver
import VhostUserFrontend

/// Bytes of a C struct.
func bytes<T>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

/// A FUSE request as the guest kernel sends it, from root.
func request(_ opcode: FUSEOpcode, unique: UInt64, node: UInt64, _ body: [UInt8] = []) -> [UInt8] {
    var header = fuse_in_header()
    header.len = UInt32(40 + body.count)
    header.opcode = opcode.rawValue
    header.unique = unique
    header.nodeid = node
    return bytes(header) + body
}

func monotonicNanoseconds() -> UInt64 {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
}

/// The operations the load generator drives.
enum Operation: String, CaseIterable {
    case getattr, lookup, readdirplus, read4k = "read-4k", read1m = "read-1m", write1m = "write-1m"
    case create = "create-release-unlink"

    /// Payload bytes moved per operation (for MB/s).
    var dataBytes: Int {
        switch self {
        case .read4k: 4096
        case .read1m, .write1m: 1 << 20
        default: 0
        }
    }
}

/// Nodes and handles the workload uses, set up once over queue 1.
struct Fixture {
    var file: UInt64 = 0
    var big: UInt64 = 0
    var bigHandle: UInt64 = 0
    var target: UInt64 = 0
    var targetHandle: UInt64 = 0
    var dir: UInt64 = 0
    var dirHandle: UInt64 = 0
    static let bigSize = 64 << 20
}

/// One queue's driver: keeps `depth` requests in flight and records each one's latency.
final class QueueLoad: @unchecked Sendable {
    let driver: VirtqueueDriver
    let kick: EventFD.Box
    let call: EventFD.Box
    let queue: Int
    let depth: Int
    /// EVENT_IDX agreed: kick only when the back-end asked for it, and ask for an interrupt only before sleeping.
    let eventIndex: Bool
    var latencies: [UInt64] = []
    var errors = 0
    var firstError: Int32 = 0

    /// Per slot: request and reply buffers, allocated once.
    var requestBuffers: [GuestAddress] = []
    var replyBuffers: [GuestAddress] = []
    static let requestCapacity = (1 << 20) + 4096
    static let replyCapacity = (1 << 20) + 4096

    init(driver: VirtqueueDriver, kick: EventFD.Box, call: EventFD.Box, queue: Int, depth: Int, eventIndex: Bool) {
        self.driver = driver
        self.kick = kick
        self.call = call
        self.queue = queue
        self.depth = depth
        self.eventIndex = eventIndex
        allocateSlots()
    }

    /// Gives each slot its buffers, touched once so that no measurement pays first-touch page faults.
    ///
    /// A Linux guest's READ and WRITE data are page-cache pages, so the data sits on a page boundary while the
    /// headers before it (80 bytes of `fuse_in_header` and `fuse_write_in`, 16 of `fuse_out_header`) are in
    /// their own buffers. Each slot's request and reply start that many bytes before a page boundary, so the
    /// data after the headers is page-aligned as in a guest: a copy into a destination 16 bytes off a page
    /// boundary runs about 2.8x slower on this machine's CPUs, which no guest would show.
    func allocateSlots() {
        driver.resetBuffers()
        requestBuffers.removeAll()
        replyBuffers.removeAll()
        for _ in 0..<depth {
            let request = driver.allocate(Self.requestCapacity, alignment: 4096)
            let reply = driver.allocate(Self.replyCapacity, alignment: 4096)
            driver.pointer(request).initializeMemory(as: UInt8.self, repeating: 0, count: Self.requestCapacity)
            driver.pointer(reply).initializeMemory(as: UInt8.self, repeating: 0, count: Self.replyCapacity)
            requestBuffers.append(GuestAddress(request.rawValue + 4096 - UInt64(Self.writeHeaders)))
            replyBuffers.append(GuestAddress(reply.rawValue + 4096 - UInt64(MemoryLayout<fuse_out_header>.size)))
        }
    }

    /// The bytes before a WRITE's data: `fuse_in_header` and `fuse_write_in`.
    static let writeHeaders = MemoryLayout<fuse_in_header>.size + MemoryLayout<fuse_write_in>.size

    /// Publishes `bytes` from slot `slot`, followed by `trailing` bytes already in the slot's buffer (a WRITE's
    /// data), with `replyLength` bytes of reply room; returns the chain head.
    func submit(slot: Int, _ bytes: [UInt8], trailing: Int = 0, replyLength: Int) -> UInt16 {
        let address = requestBuffers[slot]
        bytes.withUnsafeBytes { driver.pointer(address).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        return publish(slot: slot, length: bytes.count + trailing, replyLength: replyLength)
    }

    /// Publishes slot `slot`'s request buffer, already filled with `length` bytes.
    func publish(slot: Int, length: Int, replyLength: Int) -> UInt16 {
        driver.publishPair(slot: slot, request: requestBuffers[slot], requestLength: UInt32(length),
                           reply: replyBuffers[slot], replyLength: UInt32(replyLength))
    }

    /// Writes a `fuse_in_header` and the argument struct `arguments` into slot `slot`'s request buffer.
    func fill<T>(slot: Int, _ opcode: FUSEOpcode, unique: UInt64, node: UInt64, _ arguments: T, trailing: Int = 0) -> Int {
        var header = fuse_in_header()
        let length = MemoryLayout<fuse_in_header>.size + MemoryLayout<T>.size
        header.len = UInt32(length + trailing)
        header.opcode = opcode.rawValue
        header.unique = unique
        header.nodeid = node
        let p = driver.pointer(requestBuffers[slot])
        p.storeBytes(of: header, as: fuse_in_header.self)
        p.storeBytes(of: arguments, toByteOffset: MemoryLayout<fuse_in_header>.size, as: T.self)
        return length + trailing
    }

    /// The out header's error of slot `slot`'s reply.
    func replyError(slot: Int) -> Int32 {
        driver.pointer(replyBuffers[slot]).loadUnaligned(fromByteOffset: 4, as: Int32.self)
    }

    /// Reads a reply payload struct of slot `slot`.
    func reply<T>(slot: Int, as: T.Type) -> T {
        driver.pointer(replyBuffers[slot]).loadUnaligned(fromByteOffset: 16, as: T.self)
    }

    /// Sleeps until the back-end signals (at most a second). As a guest's driver does with EVENT_IDX, it first
    /// re-arms the interrupt, and does not sleep at all if completions came meanwhile.
    func waitForCall() {
        if !eventIndex || driver.armUsedEvent() { _ = call.wait(milliseconds: 1000) }
    }

    /// Sends one request on slot 0 and waits for its reply (set-up); returns the reply's error.
    func call(_ bytes: [UInt8], replyLength: Int) -> Int32 {
        _ = submit(slot: 0, bytes, replyLength: replyLength)
        kick.signal()
        var done = false
        while !done {
            waitForCall()
            driver.drainUsed { _ in done = true }
        }
        return replyError(slot: 0)
    }

    /// Runs `operation` until `count` operations have completed, `depth` at a time.
    func run(_ operation: Operation, count: Int, fixture: Fixture, seed: UInt64) {
        latencies.reserveCapacity(count)
        var headToSlot = [Int](repeating: -1, count: Int(driver.size))
        var finishedSlots = [Int](repeating: 0, count: depth)
        var finishedCount = 0
        var started = [UInt64](repeating: 0, count: depth)
        var stage = [Int](repeating: 0, count: depth)  // create-release-unlink: which step a slot is at
        var createdNode = [UInt64](repeating: 0, count: depth)
        var createdHandle = [UInt64](repeating: 0, count: depth)
        var issued = 0
        var completed = 0
        var unique: UInt64 = UInt64(queue) << 48
        var random = seed | 1
        func next() -> UInt64 {
            random ^= random << 13
            random ^= random >> 7
            random ^= random << 17
            return random
        }
        func name(_ slot: Int) -> [UInt8] { Array("q\(queue)-s\(slot)".utf8) + [0] }
        let writeArguments = Self.writeHeaders
        if operation == .write1m {
            // The data goes into each slot once; a request only writes its 80 bytes of headers.
            for slot in 0..<depth {
                Workload.payload.withUnsafeBytes {
                    driver.pointer(requestBuffers[slot]).advanced(by: writeArguments).copyMemory(from: $0.baseAddress!, byteCount: $0.count)
                }
            }
        }

        func issue(_ slot: Int) {
            unique += 1
            let frame: [UInt8]
            let replyLength: Int
            var trailing = 0
            switch operation {
            case .getattr:
                // The hot small operations write straight into guest memory: no per-request allocation here.
                let length = fill(slot: slot, .getattr, unique: unique, node: fixture.file, fuse_getattr_in())
                headToSlot[Int(publish(slot: slot, length: length, replyLength: 16 + MemoryLayout<fuse_attr_out>.size))] = slot
                started[slot] = monotonicNanoseconds()
                return
            case .read4k:
                var input = fuse_read_in()
                input.fh = fixture.bigHandle
                input.size = 4096
                input.offset = (next() % UInt64(Fixture.bigSize / 4096)) * 4096
                let length = fill(slot: slot, .read, unique: unique, node: fixture.big, input)
                headToSlot[Int(publish(slot: slot, length: length, replyLength: 16 + 4096))] = slot
                started[slot] = monotonicNanoseconds()
                return
            case .lookup:
                frame = request(.lookup, unique: unique, node: fuseRootID, Array("file".utf8) + [0])
                replyLength = 16 + MemoryLayout<fuse_entry_out>.size
            case .readdirplus:
                var input = fuse_read_in()
                input.fh = fixture.dirHandle
                input.size = 4096
                frame = request(.readdirplus, unique: unique, node: fixture.dir, bytes(input))
                replyLength = 16 + 4096
            case .read1m:
                var input = fuse_read_in()
                input.fh = fixture.bigHandle
                input.size = UInt32(operation.dataBytes)
                input.offset = (next() % UInt64(Fixture.bigSize / operation.dataBytes)) * UInt64(operation.dataBytes)
                frame = request(.read, unique: unique, node: fixture.big, bytes(input))
                replyLength = 16 + operation.dataBytes
            case .write1m:
                var input = fuse_write_in()
                input.fh = fixture.targetHandle
                input.size = UInt32(operation.dataBytes)
                input.offset = (next() % UInt64(Fixture.bigSize / operation.dataBytes)) * UInt64(operation.dataBytes)
                var header = request(.write, unique: unique, node: fixture.target, bytes(input))
                header.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(writeArguments + operation.dataBytes), as: UInt32.self) }
                frame = header
                trailing = operation.dataBytes
                replyLength = 16 + MemoryLayout<fuse_write_out>.size
            case .create:
                switch stage[slot] {
                case 0:
                    var input = fuse_create_in()
                    input.flags = UInt32(O_CREAT | O_RDWR | O_TRUNC)
                    input.mode = 0o100644
                    frame = request(.create, unique: unique, node: fuseRootID, bytes(input) + name(slot))
                    replyLength = 16 + MemoryLayout<fuse_entry_out>.size + MemoryLayout<fuse_open_out>.size
                case 1:
                    var input = fuse_release_in()
                    input.fh = createdHandle[slot]
                    frame = request(.release, unique: unique, node: createdNode[slot], bytes(input))
                    replyLength = 16
                default:
                    frame = request(.unlink, unique: unique, node: fuseRootID, name(slot))
                    replyLength = 16
                }
            }
            let head = submit(slot: slot, frame, trailing: trailing, replyLength: replyLength)
            headToSlot[Int(head)] = slot
            if stage[slot] == 0 { started[slot] = monotonicNanoseconds() }
        }

        /// Kicks for what was published since avail.idx was `from` (with EVENT_IDX only if the back-end asked).
        func kickIfWanted(from: UInt16) {
            if !eventIndex || driver.needsKick(since: from) { kick.signal() }
        }
        var before = driver.availableIndex
        for slot in 0..<min(depth, count) {
            issue(slot)
            issued += 1
        }
        kickIfWanted(from: before)
        while completed < count {
            waitForCall()
            before = driver.availableIndex
            var submitted = false
            // Resolve the whole batch first, then issue (a slot's descriptors are its own, so nothing is reused
            // under our feet, but the batch is also the natural unit for one kick).
            finishedCount = 0
            driver.drainUsed { done in
                let slot = headToSlot[Int(done.head)]
                if slot >= 0 {
                    finishedSlots[finishedCount] = slot
                    finishedCount += 1
                }
            }
            for i in 0..<finishedCount {
                let slot = finishedSlots[i]
                let error = replyError(slot: slot)
                if error != 0 {
                    errors += 1
                    if firstError == 0 { firstError = error }
                }
                var finished = true
                if operation == .create {
                    if stage[slot] == 0 && error == 0 {
                        createdNode[slot] = reply(slot: slot, as: fuse_entry_out.self).nodeid
                        createdHandle[slot] = driver.pointer(replyBuffers[slot]).loadUnaligned(fromByteOffset: 16 + MemoryLayout<fuse_entry_out>.size, as: UInt64.self)
                    }
                    stage[slot] = error == 0 ? (stage[slot] + 1) % 3 : 0
                    finished = stage[slot] == 0
                }
                if finished {
                    latencies.append(monotonicNanoseconds() - started[slot])
                    completed += 1
                    if issued < count {
                        issued += 1
                        issue(slot)
                        submitted = true
                    }
                } else {
                    issue(slot)
                    submitted = true
                }
            }
            if submitted { kickIfWanted(from: before) }
        }
    }
}

enum Workload {
    /// The data every WRITE sends.
    static let payload: [UInt8] = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2654435761) }
}
