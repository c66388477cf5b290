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

/// The packed ring (VIRTIO_F_RING_PACKED) as no correct guest writes it: as for the split ring, each attack
/// ends in a chain returned empty, or a request not served twice, with one log line; the daemon keeps its
/// threads and descriptors and goes on serving.
@Suite("Malformed packed rings", .serialized)
struct PackedRingAttackTests {
    /// NEXT, WRITE and INDIRECT (the availability bits are the driver's).
    static let next: UInt16 = 1
    static let write: UInt16 = 2
    static let indirect: UInt16 = 4
    typealias Raw = (address: UInt64, length: UInt32, flags: UInt16)

    /// A GETATTR of the root works (the queue still serves).
    func serves(_ session: Session) -> Bool {
        session.status(.getattr, bytes(fuse_getattr_in())) == 0
    }

    @Test("a packed ring of a size that is not a power of two serves requests, round after round of its laps")
    func oddSize() throws {
        try survive("odd size", logLines: 0, packed: true, queueSize: 100) { session, _ in
            for _ in 0..<120 { #expect(serves(session)) }
        }
    }

    @Test("a chain with NEXT on every descriptor takes the whole ring and is returned empty; the queue goes on")
    func endless() throws {
        try survive("endless chain", packed: true, queueSize: 64) { session, _ in
            #expect(serves(session))
            let done = publishRaw(session) { d in
                let request = d.write(frame(.getattr, unique: 1, bytes(fuse_getattr_in())))
                return d.makeRawPackedChain(Array(repeating: (request.rawValue, 56, Self.next), count: 64))
            }
            #expect(done?.length == 0)
            #expect(serves(session))
        }
    }

    @Test("an indirect descriptor with NEXT, after another descriptor, or with a table of a bad length is returned empty")
    func badIndirect() throws {
        try survive("bad indirect", packed: true) { session, _ in
            let d = session.requests.driver
            let request = d.write(frame(.getattr, unique: 1, bytes(fuse_getattr_in())))
            let table = d.allocate(32, alignment: 16)
            d.setPackedDescriptor(at: table.rawValue, address: request.rawValue, length: 56, id: 0, flags: 0)
            d.setPackedDescriptor(at: table.rawValue + 16, address: d.allocate(256).rawValue, length: 256, id: 0, flags: Self.write)
            let chains: [[Raw]] = [
                [(table.rawValue, 32, Self.indirect | Self.next), (request.rawValue, 56, 0)],
                [(request.rawValue, 56, Self.next), (table.rawValue, 32, Self.indirect)],
                [(table.rawValue, 24, Self.indirect)],
                [(table.rawValue, 0, Self.indirect)],
            ]
            for chain in chains {
                let done = publishRaw(session) { d in d.makeRawPackedChain(chain) }
                #expect(done?.length == 0)
            }
            // The same table, well formed, is a request like any other.
            let done = publishRaw(session) { d in d.makeRawPackedChain([(table.rawValue, 32, Self.indirect)]) }
            #expect(done.map { $0.length > 0 } == true)
            #expect(serves(session))
        }
    }

    @Test("descriptor lengths whose sum overflows, buffers past the end of memory, readable after writable: returned empty")
    func badBuffers() throws {
        try survive("bad buffers", packed: true) { session, _ in
            let d = session.requests.driver
            let request = d.write(frame(.getattr, unique: 1, bytes(fuse_getattr_in())))
            let reply = d.allocate(256)
            let chains: [[Raw]] = [
                Array(repeating: (request.rawValue, UInt32.max - 8, Self.next), count: 3) + [(request.rawValue, UInt32.max - 8, 0)],
                [(UInt64.max - 10, 100, 0)],
                [(reply.rawValue, 256, Self.write | Self.next), (request.rawValue, 56, 0)],
            ]
            for chain in chains {
                let done = publishRaw(session) { d in d.makeRawPackedChain(chain) }
                #expect(done?.length == 0)
            }
            #expect(serves(session))
        }
    }

    @Test("a chain made available at the position of one still in flight is not served twice; the first is answered once")
    func reusedPosition() throws {
        let daemon = try DaemonUnderTest()
        let session = try Session(daemon, queueSize: 64, packed: true)
        daemon.share.write("locked", "data")
        let node = try #require(session.lookup("locked"))
        let (error, handle) = session.open(node, flags: O_RDWR)
        try #require(error == 0)
        #expect(session.status(.setlk, node: node, Session.lock(handle: handle, owner: 1, type: F_WRLCK)) == 0)
        let threads = daemon.threadCount
        // A lock wait: two positions, in flight until the lock is released.
        let d = session.requests.driver
        let (start, lap) = (d.availablePosition, d.availableWrap)
        let waiting = session.requests.submit(
            frame(.setlkw, unique: 4242, node: node, uid: 0, gid: 0, Session.lock(handle: handle, owner: 2, type: F_WRLCK)),
            replyLength: 16)
        usleep(100_000)
        // Around the ring: the driver's next position is the waiting chain's start again, which no correct
        // driver reaches while that chain is out.
        while d.availablePosition != start || d.availableWrap == lap {
            #expect(serves(session))
        }
        let again = session.requests.submit(
            frame(.setlkw, unique: 4243, node: node, uid: 0, gid: 0, Session.lock(handle: handle, owner: 3, type: F_WRLCK)),
            replyLength: 16)
        usleep(200_000)
        #expect(!session.requests.isDone(again))
        #expect(daemon.threadCount <= threads + 1, "\(daemon.threadCount) threads (\(threads) before)")
        // The lock is released: the first wait is answered, once; the one at its position never is.
        #expect(session.status(.setlk, node: node, Session.lock(handle: handle, owner: 1, type: F_UNLCK)) == 0)
        #expect(session.requests.wait(for: waiting).map { outHeader($0).error } == 0)
        #expect(!session.requests.isDone(again))
        #expect(daemon.isRunning)
        #expect(daemon.problemLines.count == 1, "\(daemon.log)")
    }

    @Test("SET_VRING_BASE with a packed position past the ring ends the connection with one log line")
    func stateOutOfRange() throws {
        let daemon = try DaemonUnderTest()
        let frontend = try Frontend(
            socketPath: daemon.socketPath, requestQueues: 1, queueSize: 64, memoryPerQueue: 4 << 20, start: false, packed: true)
        try frontend.negotiate(requestQueues: 1, protocolFeatures: VhostUserProtocolFeatures.multipleQueues)
        try frontend.sendMemoryTable()
        try frontend.send(.setVringNum, payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: 64)))
        try frontend.send(.setVringBase, payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: 0x8000_8040)))
        try frontend.send(.setVringAddr, frontend.vringAddressPayload(1))
        try frontend.send(.setVringKick, payloadBytes(of: UInt64(1)), fds: [frontend.kicks[1].fd])
        let status = daemon.waitForExit(seconds: 10)
        #expect(status == 1, "status \(status.map(String.init) ?? "running"): \(daemon.log)")
        #expect(daemon.problemLines.count == 1, "\(daemon.log)")
        #expect(daemon.log.contains("past a ring of 64"))
    }
}
