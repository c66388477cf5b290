// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import FUSETestSupport
import Foundation
import Glibc
import GuestMemory
import Testing
import VFSSystem
import VhostUser
import VhostUserFrontend
import VirtqueueDriver

/// Rings and messages as no correct guest or front-end writes them. Each attack ends in an error reply (or a
/// chain returned empty) or a clean disconnect, with one log line, and the daemon's threads and descriptors stay
/// where they were.
@Suite("Malformed rings and messages", .serialized)
struct RingAttackTests {
    @Test("a descriptor chain that loops back on itself is returned empty")
    func loop() throws {
        try survive("loop") { session, _ in
            let done = publishRaw(session) { d in
                let request = d.write(frame(.getattr, unique: 1, bytes(fuse_getattr_in())))
                d.setDescriptor(index: 200, address: request.rawValue, length: 56, flags: 1, next: 201)
                d.setDescriptor(index: 201, address: request.rawValue, length: 56, flags: 1, next: 200)
                return 200
            }
            #expect(done?.length == 0)
        }
    }

    @Test("an indirect table inside an indirect table is returned empty")
    func nestedIndirect() throws {
        try survive("nested indirect") { session, _ in
            let done = publishRaw(session) { d in
                let inner = d.allocate(16, alignment: 16)
                let outer = d.allocate(16, alignment: 16)
                d.setDescriptor(table: inner.rawValue, index: 0, address: outer.rawValue, length: 16, flags: 4, next: 0)
                d.setDescriptor(table: outer.rawValue, index: 0, address: inner.rawValue, length: 16, flags: 4, next: 0)
                d.setDescriptor(index: 210, address: outer.rawValue, length: 16, flags: 4, next: 0)
                return 210
            }
            #expect(done?.length == 0)
        }
    }

    @Test("descriptor lengths whose sum overflows, and buffers past the end of memory, are returned empty")
    func overflowingLengths() throws {
        try survive("overflowing lengths") { session, _ in
            let sum = publishRaw(session) { d in
                let request = d.write(frame(.getattr, unique: 1, bytes(fuse_getattr_in())))
                for i in 0..<4 {
                    d.setDescriptor(index: UInt16(220 + i), address: request.rawValue, length: UInt32.max - 8, flags: i < 3 ? 1 : 0, next: UInt16(221 + i))
                }
                return 220
            }
            #expect(sum?.length == 0)
            let outside = publishRaw(session) { d in
                d.setDescriptor(index: 230, address: UInt64.max - 10, length: 100, flags: 0, next: 0)
                return 230
            }
            #expect(outside?.length == 0)
        }
    }

    @Test("avail.idx jumping past the ring's size stops that queue only, with one log line")
    func availableIndexJump() throws {
        try survive("avail.idx jump") { session, _ in
            let d = session.requests.driver
            d.setAvailableIndex(d.availableIndex &+ d.size &+ 7)
            session.requests.kick.signal()
            usleep(200_000)
            // The hiprio queue still takes FORGETs; the daemon still answers the front-end.
            session.hiprio.submit(frame(.forget, unique: 3, bytes(fuse_forget_in(nlookup: 1))), replyLength: 0)
            _ = try session.frontend.u64(.getFeatures)
        }
    }

    @Test("a request shorter than its header, and one whose len says more than the chain holds, get no trap")
    func shortRequests() throws {
        try survive("short requests", logLines: 1) { session, _ in
            // 10 bytes: not even a header; returned with nothing written, one warning.
            let short = session.requests.call(Array(repeating: 0x41, count: 10), replyLength: 64, milliseconds: 2000)
            #expect(short == [])
            var lying = frame(.lookup, unique: 4, name("x"))
            lying.withUnsafeMutableBytes { $0.storeBytes(of: UInt32.max, toByteOffset: 0, as: UInt32.self) }
            let reply = session.requests.call(lying, replyLength: 256)
            #expect(reply.map { outHeader($0).error } == -EINVAL)
        }
    }

    /// Sends raw bytes and descriptors on the socket of a negotiated front-end, then expects the daemon to end
    /// the connection (and exit, as it does when its front-end goes) with one log line.
    func disconnects(_ what: String, _ attack: (Frontend) throws -> Void) throws {
        let daemon = try DaemonUnderTest()
        let frontend = try Frontend(socketPath: daemon.socketPath, requestQueues: 1, queueSize: 64, memoryPerQueue: 4 << 20)
        try attack(frontend)
        let status = daemon.waitForExit(seconds: 10)
        #expect(status == 1, "\(what): status \(status.map(String.init) ?? "running"): \(daemon.log)")
        #expect(daemon.problemLines.count == 1, "\(what): \(daemon.log)")
    }

    @Test("messages with too many or too few descriptors, unknown requests, a front-end that vanishes mid-message")
    func messages() throws {
        try disconnects("two fds for a one-region table") { f in
            var payload = f.memoryTablePayload()
            payload.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(1), as: UInt32.self) }
            try f.send(.setMemTable, Array(payload.prefix(8 + 32)), fds: [f.drivers[0].memoryFile.rawValue, f.drivers[1].memoryFile.rawValue])
        }
        try disconnects("SET_VRING_CALL without its fd or the no-fd bit") { f in
            try f.send(.setVringCall, payloadBytes(of: UInt64(1)))
        }
        try disconnects("a descriptor with GET_FEATURES") { f in
            try f.send(.getFeatures, fds: [f.kicks[0].fd])
        }
        try disconnects("an unknown request") { f in
            try f.connection.send(request: 999, flags: VhostUserFlags.version, payload: [])
        }
        try disconnects("a payload size the request cannot have") { f in
            try f.send(.setVringNum, [1, 2, 3])
        }
        try disconnects("half a header, then gone") { f in
            let partial: [UInt8] = [2, 0, 0, 0, 1, 0]
            try partial.withUnsafeBytes { try UnixSocket.send(f.connection.socket.borrowed, $0) }
            UnixSocket.shutdown(f.connection.socket.borrowed)
        }
        try disconnects("a header promising a payload that never comes") { f in
            var header = cvfs_vhost_user_header(request: 2, flags: 1, size: 8)
            try withUnsafeBytes(of: &header) { try UnixSocket.send(f.connection.socket.borrowed, $0) }
            UnixSocket.shutdown(f.connection.socket.borrowed)
        }
    }
}
