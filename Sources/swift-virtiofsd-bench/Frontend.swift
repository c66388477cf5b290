// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc
import VFSSystem
import VhostUser
import VirtqueueDriver

/// Plays QEMU's part: connects to a back-end's socket, negotiates, hands it the memory and the rings of
/// `queues` request queues (plus the hiprio queue), as `vhost-user-fs-pci` does.
final class Frontend {
    let connection: VhostUserConnection
    /// Queue 0 is hiprio; 1... carry requests.
    let drivers: [VirtqueueDriver]
    let kicks: [EventFD.Box]
    let calls: [EventFD.Box]
    /// Whether VIRTIO_RING_F_EVENT_IDX was agreed.
    private(set) var eventIndex = false

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    init(socketPath: String, requestQueues: Int, queueSize: UInt16, memoryPerQueue: Int) throws {
        connection = VhostUserConnection(socket: try UnixSocket.connect(path: socketPath))
        var drivers: [VirtqueueDriver] = []
        for q in 0...requestQueues {
            drivers.append(try VirtqueueDriver(
                size: q == 0 ? 64 : queueSize, memorySize: q == 0 ? 1 << 20 : memoryPerQueue,
                guestBase: UInt64(q + 1) << 36, userBase: 0x7f00_0000_0000 + UInt64(q) << 36))
        }
        self.drivers = drivers
        kicks = try drivers.map { _ in try EventFD.Box() }
        calls = try drivers.map { _ in try EventFD.Box() }

        let features = try u64(.getFeatures)
        guard features & VirtioFeatures.version1 != 0 else { throw Failure(description: "back-end lacks VERSION_1") }
        var protocolFeatures: UInt64 = 0
        if features & VirtioFeatures.protocolFeatures != 0 {
            protocolFeatures = try u64(.getProtocolFeatures) & (VhostUserProtocolFeatures.multipleQueues | VhostUserProtocolFeatures.replyAck)
            try send(.setProtocolFeatures, payloadBytes(of: protocolFeatures))
            if protocolFeatures & VhostUserProtocolFeatures.multipleQueues != 0 {
                let count = try u64(.getQueueNum)
                guard count >= UInt64(requestQueues + 1) else {
                    throw Failure(description: "back-end serves \(count) queues, \(requestQueues + 1) wanted")
                }
            }
        }
        try send(.setOwner)
        // EVENT_IDX when the back-end offers it, as a Linux guest takes it: each side tells the other when it
        // next wants to hear (used_event, avail_event), so a busy side is neither kicked nor interrupted.
        eventIndex = features & VirtioFeatures.ringEventIndex != 0
        try send(.setFeatures, payloadBytes(of: VirtioFeatures.version1 | (features & (VirtioFeatures.protocolFeatures | VirtioFeatures.ringEventIndex))))

        var table = cvfs_vhost_memory()
        table.num_regions = UInt32(drivers.count)
        withUnsafeMutableBytes(of: &table.regions) { raw in
            for (i, d) in drivers.enumerated() {
                raw.storeBytes(of: cvfs_vhost_memory_region(
                    guest_address: d.guestBase, size: UInt64(d.mapping.length), user_address: d.userBase, mmap_offset: 0),
                    toByteOffset: i * 32, as: cvfs_vhost_memory_region.self)
            }
        }
        try send(.setMemTable, Array(payloadBytes(of: table).prefix(8 + 32 * drivers.count)), fds: drivers.map { $0.memoryFile.rawValue })
        for (q, d) in drivers.enumerated() {
            let index = UInt32(q)
            try send(.setVringNum, payloadBytes(of: cvfs_vhost_vring_state(index: index, num: UInt32(d.size))))
            try send(.setVringBase, payloadBytes(of: cvfs_vhost_vring_state(index: index, num: 0)))
            try send(.setVringAddr, payloadBytes(of: cvfs_vhost_vring_addr(
                index: index, flags: 0, descriptor: d.userAddress(d.descriptorsAddress), used: d.userAddress(d.usedAddress),
                available: d.userAddress(d.availableAddress), log: 0)))
            try send(.setVringCall, payloadBytes(of: UInt64(q)), fds: [calls[q].fd])
            try send(.setVringKick, payloadBytes(of: UInt64(q)), fds: [kicks[q].fd])
        }
        if features & VirtioFeatures.protocolFeatures != 0 {
            for q in drivers.indices {
                try send(.setVringEnable, payloadBytes(of: cvfs_vhost_vring_state(index: UInt32(q), num: 1)))
            }
        }
        // A round trip: every message above has been applied when it answers.
        _ = try u64(.getFeatures)
    }

    func send(_ request: VhostUserRequest, _ payload: [UInt8] = [], fds: [CInt] = []) throws {
        try connection.send(request: request.rawValue, flags: VhostUserFlags.version, payload: payload, fds: fds)
    }

    func u64(_ request: VhostUserRequest) throws -> UInt64 {
        try send(request)
        guard let reply = try connection.receive(), reply.request == request.rawValue, reply.payload.count == 8 else {
            throw Failure(description: "no reply to \(request)")
        }
        return reply.payload.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }
}

extension EventFD {
    /// A reference to an eventfd that threads can share.
    final class Box: @unchecked Sendable {
        let event: EventFD
        init() throws { event = try EventFD() }
        var fd: CInt { event.fd.rawValue }
        func signal() { event.signal() }
        /// Waits up to `milliseconds` for a signal and resets the counter; false on timeout.
        func wait(milliseconds: CInt) -> Bool {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, milliseconds) == 1 else { return false }
            event.drain()
            return true
        }
    }
}
