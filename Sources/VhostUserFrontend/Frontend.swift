// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc
import GuestMemory
import VFSSystem
import VhostUser
import VirtqueueDriver

/// Plays QEMU's part: connects to a back-end's socket, negotiates, hands it the memory and the rings of
/// `queues` request queues (plus the hiprio queue), as `vhost-user-fs-pci` does. The load generator drives a
/// back-end through it; the hostile-front-end tests also use its pieces one by one, to send what QEMU never
/// would.
public final class Frontend {
    public let connection: VhostUserConnection
    /// Queue 0 is hiprio; 1... carry requests.
    public let drivers: [VirtqueueDriver]
    public let kicks: [EventFD.Box]
    public let calls: [EventFD.Box]
    /// Whether VIRTIO_RING_F_EVENT_IDX was agreed.
    public private(set) var eventIndex = false
    /// Whether the queues are packed rings (VIRTIO_F_RING_PACKED asked for and agreed).
    public let packed: Bool
    /// The virtio features agreed.
    public private(set) var features: UInt64 = 0
    /// The protocol features agreed.
    public private(set) var protocolFeatures: UInt64 = 0

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    /// Connects and, unless `start` is false, negotiates, sends the memory table and starts every queue.
    public init(
        socketPath: String, requestQueues: Int, queueSize: UInt16, memoryPerQueue: Int, start: Bool = true,
        protocolFeatures wantedProtocolFeatures: UInt64 = VhostUserProtocolFeatures.multipleQueues | VhostUserProtocolFeatures.replyAck,
        packed: Bool = false
    ) throws {
        connection = VhostUserConnection(socket: try UnixSocket.connect(path: socketPath))
        self.packed = packed
        var drivers: [VirtqueueDriver] = []
        for q in 0...requestQueues {
            drivers.append(try VirtqueueDriver(
                size: q == 0 ? 64 : queueSize, memorySize: q == 0 ? 1 << 20 : memoryPerQueue,
                guestBase: UInt64(q + 1) << 36, userBase: 0x7f00_0000_0000 + UInt64(q) << 36, packed: packed))
        }
        self.drivers = drivers
        kicks = try drivers.map { _ in try EventFD.Box() }
        calls = try drivers.map { _ in try EventFD.Box() }
        guard start else { return }
        try negotiate(requestQueues: requestQueues, protocolFeatures: wantedProtocolFeatures)
        try sendMemoryTable()
        for q in drivers.indices { try startQueue(q) }
        if features & VirtioFeatures.protocolFeatures != 0 {
            for q in drivers.indices { try enableQueue(q) }
        }
        // A round trip: every message above has been applied when it answers.
        _ = try u64(.getFeatures)
    }

    /// GET_FEATURES, the protocol features, SET_OWNER and SET_FEATURES, as QEMU does.
    public func negotiate(requestQueues: Int, protocolFeatures wanted: UInt64) throws {
        let offered = try u64(.getFeatures)
        guard offered & VirtioFeatures.version1 != 0 else { throw Failure(description: "back-end lacks VERSION_1") }
        if offered & VirtioFeatures.protocolFeatures != 0 {
            protocolFeatures = try u64(.getProtocolFeatures) & wanted
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
        eventIndex = offered & VirtioFeatures.ringEventIndex != 0
        features = VirtioFeatures.version1 | (offered & (VirtioFeatures.protocolFeatures | VirtioFeatures.ringEventIndex | VirtioFeatures.ringIndirectDescriptors))
        if packed {
            guard offered & VirtioFeatures.ringPacked != 0 else { throw Failure(description: "back-end lacks RING_PACKED") }
            features |= VirtioFeatures.ringPacked
        }
        try send(.setFeatures, payloadBytes(of: features))
    }

    /// The regions of the drivers' memory, one per queue, as a SET_MEM_TABLE payload.
    public func memoryTablePayload() -> [UInt8] {
        // SAFETY: stores at most 8 regions (the drivers), each inside the table's regions array.
        var table = cvfs_vhost_memory()
        table.num_regions = UInt32(drivers.count)
        unsafe withUnsafeMutableBytes(of: &table.regions) { raw in
            for (i, d) in drivers.enumerated() {
                unsafe raw.storeBytes(of: cvfs_vhost_memory_region(
                    guest_address: d.guestBase, size: UInt64(d.mapping.length), user_address: d.userBase, mmap_offset: 0),
                    toByteOffset: i * 32, as: cvfs_vhost_memory_region.self)
            }
        }
        return Array(payloadBytes(of: table).prefix(8 + 32 * drivers.count))
    }

    /// SET_MEM_TABLE with every driver's memory (sent again, it replaces the table as memory hot-plug does).
    public func sendMemoryTable(needReply: Bool = false) throws {
        try send(.setMemTable, memoryTablePayload(), fds: drivers.map { $0.memoryFile.rawValue }, needReply: needReply)
    }

    /// SET_VRING_NUM, _BASE, _ADDR, _CALL and _KICK for queue `q`: the back-end starts serving it.
    /// A packed ring starts from its driver's positions and wrap counters.
    public func startQueue(_ q: Int, base: UInt16 = 0) throws {
        let d = drivers[q]
        let index = UInt32(q)
        let state = d.packed ? d.packedState : UInt32(base)
        try send(.setVringNum, payloadBytes(of: cvfs_vhost_vring_state(index: index, num: UInt32(d.size))))
        try send(.setVringBase, payloadBytes(of: cvfs_vhost_vring_state(index: index, num: state)))
        try send(.setVringAddr, vringAddressPayload(q))
        try send(.setVringCall, payloadBytes(of: UInt64(q)), fds: [calls[q].fd])
        try send(.setVringKick, payloadBytes(of: UInt64(q)), fds: [kicks[q].fd])
    }

    /// The SET_VRING_ADDR payload of queue `q`: its driver's rings, as front-end virtual addresses.
    public func vringAddressPayload(_ q: Int, offsets: (descriptors: UInt64, available: UInt64, used: UInt64) = (0, 0, 0)) -> [UInt8] {
        let d = drivers[q]
        return payloadBytes(of: cvfs_vhost_vring_addr(
            index: UInt32(q), flags: 0, descriptor: d.userAddress(d.descriptorsAddress) + offsets.descriptors,
            used: d.userAddress(d.usedAddress) + offsets.used, available: d.userAddress(d.availableAddress) + offsets.available, log: 0))
    }

    /// SET_VRING_ENABLE 1 for queue `q`.
    public func enableQueue(_ q: Int) throws {
        try send(.setVringEnable, payloadBytes(of: cvfs_vhost_vring_state(index: UInt32(q), num: 1)))
    }

    /// GET_VRING_BASE: stops queue `q` and returns where the back-end stopped.
    public func stopQueue(_ q: Int) throws -> UInt16 {
        UInt16(truncatingIfNeeded: try stopQueueState(q))
    }

    /// GET_VRING_BASE: stops queue `q` and returns the whole state (a packed ring's two positions).
    public func stopQueueState(_ q: Int) throws -> UInt32 {
        // SAFETY: the payload is checked to be 8 bytes before it is read.
        try send(.getVringBase, payloadBytes(of: cvfs_vhost_vring_state(index: UInt32(q), num: 0)))
        guard let reply = try connection.receive(), reply.request == VhostUserRequest.getVringBase.rawValue,
              reply.payload.count == 8
        else { throw Failure(description: "no reply to GET_VRING_BASE") }
        return unsafe reply.payload.withUnsafeBytes { unsafe UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self)) }
    }

    public func send(_ request: VhostUserRequest, _ payload: [UInt8] = [], fds: [CInt] = [], needReply: Bool = false) throws {
        try connection.send(
            request: request.rawValue, flags: VhostUserFlags.version | (needReply ? VhostUserFlags.needReply : 0),
            payload: payload, fds: fds)
    }

    /// Sends a request and reads its u64 reply (GET_FEATURES and the like, or a REPLY_ACK).
    public func u64(_ request: VhostUserRequest, _ payload: [UInt8] = [], fds: [CInt] = [], needReply: Bool = false) throws -> UInt64 {
        // SAFETY: the payload is checked to be 8 bytes before it is read.
        try send(request, payload, fds: fds, needReply: needReply)
        guard let reply = try connection.receive(), reply.request == request.rawValue, reply.payload.count == 8 else {
            throw Failure(description: "no reply to \(request)")
        }
        return unsafe reply.payload.withUnsafeBytes { unsafe $0.loadUnaligned(as: UInt64.self) }
    }
}

extension EventFD {
    /// A reference to an eventfd that threads can share.
    public final class Box: @unchecked Sendable {
        public let event: EventFD
        public init() throws { event = try EventFD() }
        public var fd: CInt { event.fd.rawValue }
        public func signal() { event.signal() }
        /// Waits up to `milliseconds` for a signal and resets the counter; false on timeout.
        public func wait(milliseconds: CInt) -> Bool {
            // SAFETY: poll reads and writes this local pollfd during the call.
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard unsafe poll(&pfd, 1, milliseconds) == 1 else { return false }
            event.drain()
            return true
        }
    }
}
