// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Foundation
import Glibc
import Testing
import VFSSystem
import VhostUser
import VhostUserFrontend

/// `--tag`: the device's config space, for front-ends that read it from the back-end (GET_CONFIG).
@Suite("The config space", .serialized)
struct ConfigSpaceTests {
    func connect(_ daemon: DaemonUnderTest) throws -> Frontend {
        try Frontend(socketPath: daemon.socketPath, requestQueues: 1, queueSize: 64, memoryPerQueue: 1 << 20, start: false,
                     protocolFeatures: VhostUserProtocolFeatures.multipleQueues | VhostUserProtocolFeatures.replyAck
                        | VhostUserProtocolFeatures.config)
    }

    func getConfig(_ frontend: Frontend, offset: UInt32, size: UInt32, payloadSize: Int? = nil) throws -> [UInt8]? {
        var payload = payloadBytes(of: cvfs_vhost_user_config_header(offset: offset, size: size, flags: 0))
        payload += [UInt8](repeating: 0, count: payloadSize ?? Int(size))
        try frontend.send(.getConfig, payload)
        guard let reply = try frontend.connection.receive() else { return nil }
        return reply.payload
    }

    @Test("with --tag, CONFIG is offered and GET_CONFIG answers struct virtio_fs_config: the tag NUL-padded, the queues")
    func tag() throws {
        let daemon = try DaemonUnderTest(["--tag", "myfs"])
        let frontend = try connect(daemon)
        try frontend.negotiate(requestQueues: 1, protocolFeatures: VhostUserProtocolFeatures.config | VhostUserProtocolFeatures.replyAck)
        #expect(frontend.protocolFeatures & VhostUserProtocolFeatures.config != 0)
        let reply = try #require(try getConfig(frontend, offset: 0, size: 40))
        #expect(reply.count == 12 + 40)
        #expect(Array(reply[12..<16]) == Array("myfs".utf8) && reply[16..<48].allSatisfy { $0 == 0 })
        #expect(reply[48..<52].withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) } == 64)
        // Part of it, from an offset: the queue count alone.
        let part = try #require(try getConfig(frontend, offset: 36, size: 4))
        #expect(Array(part[12...]) == [64, 0, 0, 0])
        #expect(daemon.isRunning)
    }

    @Test("a GET_CONFIG past the space, larger than 256 bytes or with a payload that does not match is a protocol error",
          arguments: [(UInt32(0), UInt32(41), Optional<Int>.none), (36, 8, nil), (0, 300, nil), (0, 40, 8), (UInt32.max, 4, nil)])
    func outOfRange(offset: UInt32, size: UInt32, payloadSize: Int?) throws {
        let daemon = try DaemonUnderTest(["--tag", "myfs"])
        let frontend = try connect(daemon)
        try frontend.negotiate(requestQueues: 1, protocolFeatures: VhostUserProtocolFeatures.config)
        #expect(try getConfig(frontend, offset: offset, size: size, payloadSize: payloadSize) == nil)
        #expect(daemon.waitForExit(seconds: 5) == 1, "\(daemon.log)")
        #expect(daemon.problemLines.count == 1, "\(daemon.log)")
    }

    @Test("without --tag, CONFIG is not offered (QEMU 7.1 to 8.0 crash on it), and GET_CONFIG is a protocol error")
    func noTag() throws {
        let daemon = try DaemonUnderTest()
        let frontend = try connect(daemon)
        try frontend.negotiate(requestQueues: 1, protocolFeatures: VhostUserProtocolFeatures.config)
        #expect(frontend.protocolFeatures & VhostUserProtocolFeatures.config == 0)
        #expect(try getConfig(frontend, offset: 0, size: 40) == nil)
        #expect(daemon.waitForExit(seconds: 5) == 1, "\(daemon.log)")
    }
}
