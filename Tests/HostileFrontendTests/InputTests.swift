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

/// Lengths, counts and offsets from the guest and from the front-end, checked before any use.
@Suite("No trap is reachable from input", .serialized)
struct InputTests {
    /// FUSE_SECURITY_CTX sits in flags2 (bit 32); INIT_EXT (bit 30) lets the guest offer it.
    static let securityContextFlags: UInt64 = 0xffff_ffff | (1 << 32)

    @Test("a creating request with extensions and a header len shorter than the header is an error reply",
          arguments: [UInt32(0), 16, 39, 41])
    func extensionLength(len: UInt32) throws {
        let daemon = try DaemonUnderTest(["--security-label"])
        let session = try Session(daemon, initFlags: Self.securityContextFlags)
        var input = fuse_create_in()
        input.flags = UInt32(O_RDWR | O_CREAT)
        input.mode = UInt32(Glibc.S_IFREG) | 0o644
        var request = frame(.create, unique: 5, uid: 0, gid: 0, bytes(input) + name("labelled"))
        request.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: len, toByteOffset: 0, as: UInt32.self)  // fuse_in_header.len
            raw.storeBytes(of: UInt16(1), toByteOffset: 36, as: UInt16.self)  // total_extlen: 8 bytes
        }
        let reply = session.requests.call(request, replyLength: 256)
        #expect(reply.map { outHeader($0).error } == -EINVAL, "reply: \(reply.map { "error \(outHeader($0).error)" } ?? "none")")
        #expect(daemon.isRunning, "the daemon died: \(daemon.log)")
        #expect(session.status(.getattr, bytes(fuse_getattr_in())) == 0)
    }

    @Test("a reply that does not fit the guest's buffer is an error, and nothing was changed")
    func replyTooSmall() throws {
        let daemon = try DaemonUnderTest()
        let session = try Session(daemon)
        var input = fuse_create_in()
        input.flags = UInt32(O_RDWR | O_CREAT)
        input.mode = UInt32(Glibc.S_IFREG) | 0o644
        let create = session.requests.call(frame(.create, unique: 6, uid: 0, gid: 0, bytes(input) + name("new")), replyLength: 32)
        #expect(create.map { outHeader($0).error } == -EINVAL)
        #expect(!FileManager.default.fileExists(atPath: "\(daemon.share.path)/new"))
        var mkdir = fuse_mkdir_in()
        mkdir.mode = 0o755
        let made = session.requests.call(frame(.mkdir, unique: 7, uid: 0, gid: 0, bytes(mkdir) + name("dir")), replyLength: 64)
        #expect(made.map { outHeader($0).error } == -EINVAL)
        #expect(!FileManager.default.fileExists(atPath: "\(daemon.share.path)/dir"))
        daemon.share.write("file", "x")
        let lookup = session.requests.call(frame(.lookup, unique: 8, uid: 0, gid: 0, name("file")), replyLength: 100)
        #expect(lookup.map { outHeader($0).error } == -EINVAL)
        #expect(daemon.isRunning)
    }

    /// A front-end that has negotiated, with REPLY_ACK, and sent nothing else.
    func negotiated(_ daemon: DaemonUnderTest) throws -> Frontend {
        let frontend = try Frontend(socketPath: daemon.socketPath, requestQueues: 1, queueSize: 64, memoryPerQueue: 4 << 20, start: false)
        try frontend.negotiate(requestQueues: 1, protocolFeatures: VhostUserProtocolFeatures.multipleQueues | VhostUserProtocolFeatures.replyAck)
        return frontend
    }

    @Test("a memory region larger than its file is refused (it would fault with SIGBUS at first use)")
    func regionLargerThanFile() throws {
        let daemon = try DaemonUnderTest()
        let frontend = try negotiated(daemon)
        var payload = frontend.memoryTablePayload()
        // Region 1 claims twice its memory file's size.
        let size = UInt64(frontend.drivers[1].mapping.length)
        payload.withUnsafeMutableBytes { $0.storeBytes(of: size * 2, toByteOffset: 8 + 32 + 8, as: UInt64.self) }
        let ack = try frontend.u64(.setMemTable, payload, fds: frontend.drivers.map { $0.memoryFile.rawValue }, needReply: true)
        #expect(ack != 0, "the region was accepted")
        #expect(daemon.problemLines.count == 1, "\(daemon.log)")
        // The right table is taken, and the queues work.
        #expect(try frontend.u64(.setMemTable, frontend.memoryTablePayload(), fds: frontend.drivers.map { $0.memoryFile.rawValue }, needReply: true) == 0)
        for q in 0...1 { try frontend.startQueue(q) }
        for q in 0...1 { try frontend.enableQueue(q) }
        let queue = GuestQueue(frontend, 1)
        let reply = queue.call(initFrame(minor: 38, flags: 0xffff_ffff), replyLength: 80)
        #expect(reply.map { outHeader($0).error } == 0)
        #expect(daemon.isRunning)
    }

    @Test("ring addresses that are not aligned as the virtio spec requires are refused",
          arguments: [(1, 0, 0), (0, 1, 0), (0, 0, 2)])
    func misalignedRing(offsets: (UInt64, UInt64, UInt64)) throws {
        let daemon = try DaemonUnderTest()
        let frontend = try negotiated(daemon)
        #expect(try frontend.u64(.setMemTable, frontend.memoryTablePayload(), fds: frontend.drivers.map { $0.memoryFile.rawValue }, needReply: true) == 0)
        let d = frontend.drivers[1]
        try frontend.send(.setVringNum, payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: UInt32(d.size))))
        let ack = try frontend.u64(
            .setVringAddr, frontend.vringAddressPayload(1, offsets: (offsets.0, offsets.1, offsets.2)), needReply: true)
        #expect(ack != 0, "misaligned rings were accepted")
        #expect(daemon.isRunning)
    }

    @Test("kick and call descriptors that are not eventfds are refused; a regular file is never written")
    func notEventFDs() throws {
        let daemon = try DaemonUnderTest()
        let frontend = try negotiated(daemon)
        #expect(try frontend.u64(.setMemTable, frontend.memoryTablePayload(), fds: frontend.drivers.map { $0.memoryFile.rawValue }, needReply: true) == 0)
        let scratch = Scratch("file")
        let path = "\(scratch.path)/call"
        let file = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(file) }
        var pipeFDs: [Int32] = [0, 0]
        #expect(pipe(&pipeFDs) == 0)
        defer { close(pipeFDs[0]); close(pipeFDs[1]) }
        #expect(try frontend.u64(.setVringCall, payloadBytes(of: UInt64(1)), fds: [file], needReply: true) != 0, "a regular file was taken as call fd")
        #expect(try frontend.u64(.setVringCall, payloadBytes(of: UInt64(1)), fds: [pipeFDs[1]], needReply: true) != 0, "a pipe was taken as call fd")
        let d = frontend.drivers[1]
        try frontend.send(.setVringNum, payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: UInt32(d.size))))
        try frontend.send(.setVringAddr, frontend.vringAddressPayload(1))
        #expect(try frontend.u64(.setVringKick, payloadBytes(of: UInt64(1)), fds: [pipeFDs[0]], needReply: true) != 0, "a pipe was taken as kick fd")
        // With proper eventfds the queue runs, and the file was never written.
        try frontend.startQueue(1)
        try frontend.enableQueue(1)
        let queue = GuestQueue(frontend, 1)
        #expect(queue.call(initFrame(minor: 38, flags: 0xffff_ffff), replyLength: 80).map { outHeader($0).error } == 0)
        var info = stat()
        #expect(fstat(file, &info) == 0 && info.st_size == 0)
        #expect(daemon.isRunning)
    }

    @Test("a SET_VRING_KICK that fails keeps the call eventfd sent before it")
    func failedKickKeepsCall() throws {
        let daemon = try DaemonUnderTest()
        let frontend = try negotiated(daemon)
        #expect(try frontend.u64(.setMemTable, frontend.memoryTablePayload(), fds: frontend.drivers.map { $0.memoryFile.rawValue }, needReply: true) == 0)
        let d = frontend.drivers[1]
        try frontend.send(.setVringNum, payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: UInt32(d.size))))
        try frontend.send(.setVringBase, payloadBytes(of: cvfs_vhost_vring_state(index: 1, num: 0)))
        // Rings outside guest memory: the kick that would start the queue fails.
        try frontend.send(.setVringAddr, payloadBytes(of: cvfs_vhost_vring_addr(index: 1, flags: 0, descriptor: 0x1000, used: 0x3000, available: 0x2000, log: 0)))
        try frontend.send(.setVringCall, payloadBytes(of: UInt64(1)), fds: [frontend.calls[1].fd])
        #expect(try frontend.u64(.setVringKick, payloadBytes(of: UInt64(1)), fds: [frontend.kicks[1].fd], needReply: true) != 0)
        // The front-end corrects the addresses and kicks again, with no new call fd.
        try frontend.send(.setVringAddr, frontend.vringAddressPayload(1))
        #expect(try frontend.u64(.setVringKick, payloadBytes(of: UInt64(1)), fds: [frontend.kicks[1].fd], needReply: true) == 0)
        try frontend.enableQueue(1)
        let queue = GuestQueue(frontend, 1)
        queue.submit(initFrame(minor: 38, flags: 0xffff_ffff), replyLength: 80)
        #expect(frontend.calls[1].wait(milliseconds: 3000), "the guest was never signalled: the call fd was lost")
        #expect(daemon.isRunning)
    }
}
