// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import GuestMemory
import Logging
import VFSSystem
import Virtqueue

/// The back-end side of a vhost-user connection: applies each front-end request to the device state, starts
/// and stops the queue workers, and answers. Runs on the thread that reads the socket.
public final class VhostUserHandler {
    /// Virtio features every vhost-user device here offers.
    public static let genericFeatures: UInt64 =
        VirtioFeatures.version1 | VirtioFeatures.ringIndirectDescriptors | VirtioFeatures.ringEventIndex
        | VirtioFeatures.protocolFeatures | VirtioFeatures.logAll | VirtioFeatures.ringPacked
    /// Protocol features offered whatever the device. CONFIG only comes with a device config space
    /// (`offeredProtocolFeatures`): QEMU 7.1 to 8.0 crash when a back-end offers it.
    public static let supportedProtocolFeatures: UInt64 =
        VhostUserProtocolFeatures.multipleQueues | VhostUserProtocolFeatures.replyAck
        | VhostUserProtocolFeatures.backendRequests | VhostUserProtocolFeatures.resetDevice
        | VhostUserProtocolFeatures.configureMemSlots | VhostUserProtocolFeatures.logSharedMemory
    /// Memory slots offered with CONFIGURE_MEM_SLOTS.
    public static let maxMemorySlots: UInt64 = 509

    /// One queue's configuration as the front-end sent it.
    final class Vring {
        var size: UInt16 = 0
        var addresses: VringAddresses?
        /// SET_VRING_BASE's value: the next available index (split), or both positions and wrap counters (packed).
        var base: UInt32 = 0
        var enabled = false
        var callFD: OwnedFD?
        var errorFD: OwnedFD?
        var worker: VringWorker?
        var shared: VringShared?
        /// SET_VRING_ADDR's VHOST_VRING_F_LOG and log address: where the used ring is logged while migrating.
        var logsUsed = false
        var usedLogAddress: UInt64 = 0
    }

    static func freshVrings(_ count: Int) -> [Vring] { (0..<count).map { _ in Vring() } }

    let backend: any VhostUserBackend
    let logger: Logger
    /// Tells eventfds from other descriptors the front-end might send by mistake (nil: by fstat alone).
    let procSelf: ProcSelfDirectory?
    public private(set) var features: UInt64 = 0
    public private(set) var protocolFeatures: UInt64 = 0
    public private(set) var memory = GuestMemoryMap.empty
    var vrings: [Vring]
    var backendRequestFD: OwnedFD?
    var memoryGeneration: UInt64 = 0
    /// The dirty-page log of SET_LOG_BASE; written only while VHOST_F_LOG_ALL is on.
    var dirtyLog: DirtyLog?
    /// SET_LOG_FD's eventfd: kept, never signalled (QEMU reads the log at its own pace).
    var logFD: OwnedFD?
    /// Counts changes of the logging settings given to the queues.
    var loggingGeneration: UInt64 = 0
    /// The device-state transfer under way (SET_DEVICE_STATE_FD until CHECK_DEVICE_STATE).
    var stateJob: DeviceStateJob?
    /// How long a device-state transfer waits for a front-end that neither reads nor writes its end before it
    /// fails (tests and the fuzzer shorten it).
    public nonisolated(unsafe) static var deviceStateStallMilliseconds: CInt = 30_000
    /// How long a change of logging settings waits for a queue that is busy with one long request.
    static var loggingWaitMilliseconds: Int { 10_000 }

    /// The protocol features this back-end offers: CONFIG too when the device has a config space to give.
    public var offeredProtocolFeatures: UInt64 {
        Self.supportedProtocolFeatures | (backend.configSpace != nil ? VhostUserProtocolFeatures.config : 0)
            | (backend.deviceState != nil ? VhostUserProtocolFeatures.deviceState : 0)
    }

    public init(backend: any VhostUserBackend, logger: Logger, procSelf: ProcSelfDirectory? = nil) {
        self.backend = backend
        self.logger = logger
        self.procSelf = procSelf
        vrings = Self.freshVrings(backend.maxQueues)
    }

    deinit {
        stopAll()
        _ = stateJob?.finish()
    }

    /// Serves the connection until the front-end closes it (returns) or breaks the protocol (throws).
    /// Every queue worker is stopped before it returns.
    public func serve(_ connection: borrowing VhostUserConnection) throws(VhostUserError) {
        _ = try serve(connection) { _ in true }
    }

    /// As `serve`, but before each message `waitForMessage` waits for the socket to be readable and may say to
    /// stop instead (false): then the queue workers are stopped (each answers what it is serving) and serve
    /// returns true. Returns false when the front-end closes the connection.
    public func serve(_ connection: borrowing VhostUserConnection, waitForMessage: (FileDescriptor) -> Bool) throws(VhostUserError) -> Bool {
        defer { stopAll() }
        while true {
            guard waitForMessage(connection.socket.borrowed) else { return true }
            guard let message = try connection.receive() else { return false }
            try handle(message, on: connection)
        }
    }

    /// Applies one message and sends its reply, if it has one.
    public func handle(_ message: VhostUserMessage, on connection: borrowing VhostUserConnection) throws(VhostUserError) {
        guard let request = VhostUserRequest(rawValue: message.request) else {
            throw .unknownRequest(message.request)
        }
        logger.trace("vhost-user \(request) size \(message.payload.count) fds \(message.fds.count)")
        let wantsAck = message.flags & VhostUserFlags.needReply != 0
            && protocolFeatures & VhostUserProtocolFeatures.replyAck != 0
        let reply: [UInt8]?
        do {
            reply = try apply(request, message)
        } catch {
            if wantsAck, case .invalid = error {
                // The front-end asked to hear about failure: tell it, log, and carry on.
                logger.error("vhost-user: \(error)")
                try connection.reply(to: message.request, payload: payloadBytes(of: UInt64(1).littleEndian))
                return
            }
            throw error
        }
        if let reply {
            try connection.reply(to: message.request, payload: reply)
        } else if wantsAck {
            try connection.reply(to: message.request, payload: payloadBytes(of: UInt64(0).littleEndian))
        }
    }

    /// Does what `request` asks; returns the reply payload for requests that have one.
    func apply(_ request: VhostUserRequest, _ message: VhostUserMessage) throws(VhostUserError) -> [UInt8]? {
        switch request {
        case .getFeatures:
            try expectNoDescriptors(message, request)
            return payloadBytes(of: (Self.genericFeatures | backend.deviceFeatures).littleEndian)
        case .setFeatures:
            try expectNoDescriptors(message, request)
            let wanted = try message.decodeU64(for: request)
            let offered = Self.genericFeatures | backend.deviceFeatures
            guard wanted & ~offered == 0 else {
                throw .invalid(request, "features 0x\(String(wanted & ~offered, radix: 16)) were not offered")
            }
            let loggingChanged = (features ^ wanted) & VirtioFeatures.logAll != 0
            features = wanted
            // Without VHOST_USER_F_PROTOCOL_FEATURES rings are enabled as soon as they start.
            if features & VirtioFeatures.protocolFeatures == 0 {
                for i in vrings.indices { setEnabled(i, true) }
            }
            // QEMU waits for the ack of the SET_FEATURES that starts logging: by then every queue logs.
            if loggingChanged { updateLogging() }
            return nil
        case .getProtocolFeatures:
            try expectNoDescriptors(message, request)
            return payloadBytes(of: offeredProtocolFeatures.littleEndian)
        case .setProtocolFeatures:
            try expectNoDescriptors(message, request)
            let wanted = try message.decodeU64(for: request)
            guard wanted & ~offeredProtocolFeatures == 0 else {
                throw .invalid(request, "protocol features 0x\(String(wanted, radix: 16)) were not offered")
            }
            protocolFeatures = wanted
            return nil
        case .setOwner:
            try expectNoDescriptors(message, request)
            return nil
        case .resetOwner, .resetDevice:
            try expectNoDescriptors(message, request)
            stopAll()
            vrings = Self.freshVrings(backend.maxQueues)
            features = 0
            dirtyLog = nil
            backend.reset()
            return nil
        case .getQueueNum:
            try expectNoDescriptors(message, request)
            return payloadBytes(of: UInt64(backend.maxQueues).littleEndian)
        case .getMaxMemSlots:
            try expectNoDescriptors(message, request)
            return payloadBytes(of: Self.maxMemorySlots.littleEndian)
        case .setMemTable:
            try setMemoryTable(message)
            return nil
        case .addMemReg:
            try addMemoryRegion(message)
            return nil
        case .remMemReg:
            try removeMemoryRegion(message)
            return nil
        case .setVringNum:
            try expectNoDescriptors(message, request)
            let (index, size) = try vringState(message, request)
            // A packed ring may have any size (virtio 1.2 §2.8: up to 2^15); a split one a power of two.
            guard size > 0, size <= UInt32(backend.maxQueueSize), isPacked || size & (size - 1) == 0 else {
                throw .invalid(request, "queue \(index): size \(size) is not \(isPacked ? "1" : "a power of two") up to \(backend.maxQueueSize)")
            }
            vrings[index].size = UInt16(truncatingIfNeeded: size == 32768 ? 32768 : size)
            return nil
        case .setVringAddr:
            try expectNoDescriptors(message, request)
            let address = try message.decode(cvfs_vhost_vring_addr.self, for: request)
            let index = try queueIndex(UInt32(littleEndian: address.index), request)
            let addresses = VringAddresses(
                descriptors: UInt64(littleEndian: address.descriptor), available: UInt64(littleEndian: address.available),
                used: UInt64(littleEndian: address.used))
            // virtio 1.2 §2.7, "Alignment": the descriptor table on 16 bytes, the available ring on 2, the used
            // ring on 4; §2.8.2 for a packed ring: the ring on 16, both event structures on 4. The ring indexes
            // and event structures are read and written atomically; misaligned they could tear.
            guard addresses.descriptors % 16 == 0, addresses.available % (isPacked ? 4 : 2) == 0, addresses.used % 4 == 0 else {
                throw .invalid(request, "queue \(index): ring addresses are not aligned (descriptors on 16, available on \(isPacked ? 4 : 2), used on 4 bytes)")
            }
            vrings[index].addresses = addresses
            let logsUsed = UInt32(littleEndian: address.flags) & VringAddressFlags.log != 0
            let usedLogAddress = UInt64(littleEndian: address.log)
            if logsUsed != vrings[index].logsUsed || usedLogAddress != vrings[index].usedLogAddress {
                vrings[index].logsUsed = logsUsed
                vrings[index].usedLogAddress = usedLogAddress
                updateLogging()
            }
            return nil
        case .setVringBase:
            try expectNoDescriptors(message, request)
            let (index, base) = try vringState(message, request)
            // Split: bits 16-31 are reserved; packed: checked against the size when the ring starts.
            vrings[index].base = isPacked ? base : base & 0xffff
            return nil
        case .getVringBase:
            try expectNoDescriptors(message, request)
            let (index, _) = try vringState(message, request)
            let next = stopVring(index)
            // A stopped ring is disabled again until the front-end enables it (with protocol features).
            if features & VirtioFeatures.protocolFeatures != 0 { vrings[index].enabled = false }
            vrings[index].callFD = nil
            return payloadBytes(of: cvfs_vhost_vring_state(index: UInt32(index).littleEndian, num: next.littleEndian))
        case .setVringKick:
            let index = try vringDescriptor(message, request)
            guard let fd = try eventFD(message, request, index) else {
                throw .invalid(request, "queue \(index): polling mode (no kick eventfd) is not supported")
            }
            _ = stopVring(index)
            try startVring(index, kick: fd)
            return nil
        case .setVringCall:
            let index = try vringDescriptor(message, request)
            let fd = try eventFD(message, request, index)
            if let shared = vrings[index].shared {
                shared.replaceCallFD(fd)
            } else {
                vrings[index].callFD = fd
            }
            return nil
        case .setVringErr:
            let index = try vringDescriptor(message, request)
            vrings[index].errorFD = try eventFD(message, request, index)
            return nil
        case .setVringEnable:
            try expectNoDescriptors(message, request)
            let (index, value) = try vringState(message, request)
            guard value <= 1 else { throw .invalid(request, "enable value \(value)") }
            setEnabled(index, value == 1)
            return nil
        case .setBackendReqFD:
            guard message.fds.count == 1 else { throw .badDescriptorCount(request, message.fds.count) }
            // Kept for the life of the connection; nothing is sent on it yet (no DAX, no notifications).
            backendRequestFD = message.fds.take(0)
            return nil
        case .getConfig:
            try expectNoDescriptors(message, request)
            return try configReply(message, request)
        case .setConfig:
            // virtio-fs's config space is the device's to say; the driver never writes it.
            throw .invalid(request, "the config space is read-only")
        case .setLogBase:
            try setLogBase(message)
            return payloadBytes(of: UInt64(0).littleEndian)
        case .setLogFD:
            guard message.fds.count == 1 else { throw .badDescriptorCount(request, message.fds.count) }
            guard let fd = message.fds.take(0), fd.borrowed.isEventFD(proc: procSelf) else {
                throw .invalid(request, "the descriptor is not an eventfd")
            }
            logFD = consume fd
            return nil
        case .setDeviceStateFD:
            return payloadBytes(of: setDeviceStateFD(message).littleEndian)
        case .checkDeviceState:
            try expectNoDescriptors(message, request)
            return payloadBytes(of: checkDeviceState().littleEndian)
        default:
            throw .unknownRequest(request.rawValue)
        }
    }

    /// GET_CONFIG: the header as sent, then `size` bytes of the config space from `offset`.
    func configReply(_ message: VhostUserMessage, _ request: VhostUserRequest) throws(VhostUserError) -> [UInt8] {
        let headerSize = MemoryLayout<cvfs_vhost_user_config_header>.size
        guard let space = backend.configSpace, protocolFeatures & VhostUserProtocolFeatures.config != 0 else {
            throw .invalid(request, "VHOST_USER_PROTOCOL_F_CONFIG was not agreed")
        }
        guard message.payload.count >= headerSize else { throw .invalid(request, "payload of \(message.payload.count) bytes") }
        let header = message.payload.withUnsafeBytes { $0.loadUnaligned(as: cvfs_vhost_user_config_header.self) }
        let offset = Int(UInt32(littleEndian: header.offset))
        let size = Int(UInt32(littleEndian: header.size))
        guard size <= Int(CVFS_VHOST_USER_MAX_CONFIG_SIZE), message.payload.count == headerSize + size,
              offset <= space.count, size <= space.count - offset
        else { throw .invalid(request, "offset \(offset) size \(size) of a \(space.count)-byte config space") }
        return Array(message.payload[0..<headerSize]) + space[offset..<offset + size]
    }

    // MARK: Queues

    /// Whether the queues are packed rings (VIRTIO_F_RING_PACKED agreed).
    var isPacked: Bool { features & VirtioFeatures.ringPacked != 0 }

    func queueIndex(_ raw: UInt32, _ request: VhostUserRequest) throws(VhostUserError) -> Int {
        guard raw < UInt32(vrings.count) else { throw .badQueueIndex(request, raw) }
        return Int(raw)
    }

    /// Decodes a vring state payload (SET_VRING_NUM/BASE/ENABLE, GET_VRING_BASE): a checked queue index and a value.
    func vringState(_ message: VhostUserMessage, _ request: VhostUserRequest) throws(VhostUserError) -> (index: Int, value: UInt32) {
        let state = try message.decode(cvfs_vhost_vring_state.self, for: request)
        return (try queueIndex(UInt32(littleEndian: state.index), request), UInt32(littleEndian: state.num))
    }

    func expectNoDescriptors(_ message: VhostUserMessage, _ request: VhostUserRequest) throws(VhostUserError) {
        guard message.fds.isEmpty else { throw .badDescriptorCount(request, message.fds.count) }
    }

    /// Decodes the u64 of SET_VRING_KICK/CALL/ERR: the queue index in bits 0-7, bit 8 set when no fd is sent.
    /// The fd, when there is one, is the message's descriptor 0.
    func vringDescriptor(_ message: VhostUserMessage, _ request: VhostUserRequest) throws(VhostUserError) -> Int {
        let value = try message.decodeU64(for: request)
        guard value & ~UInt64(0x1ff) == 0 else { throw .invalid(request, "reserved bits set in 0x\(String(value, radix: 16))") }
        let index = try queueIndex(UInt32(value & 0xff), request)
        let noFD = value & 0x100 != 0
        guard message.fds.count == (noFD ? 0 : 1) else { throw .badDescriptorCount(request, message.fds.count) }
        return index
    }

    /// The eventfd of SET_VRING_KICK, _CALL or _ERR: nil when the message says none is sent.
    /// - Throws: `.invalid` when the descriptor is not an eventfd (a file, a pipe, a socket would be written to,
    ///   or block the queue's thread).
    func eventFD(_ message: VhostUserMessage, _ request: VhostUserRequest, _ index: Int) throws(VhostUserError) -> OwnedFD? {
        guard let fd = message.fds.take(0) else { return nil }
        guard fd.borrowed.isEventFD(proc: procSelf) else {
            throw .invalid(request, "queue \(index): the descriptor is not an eventfd")
        }
        return fd
    }

    func startVring(_ index: Int, kick: consuming OwnedFD) throws(VhostUserError) {
        guard vrings[index].size > 0, let addresses = vrings[index].addresses else {
            throw .invalid(.setVringKick, "queue \(index): kick before its size and addresses")
        }
        let shared = VringShared(
            memory: memory, enabled: vrings[index].enabled, callFD: vrings[index].callFD.take(), logging: logging(index))
        let worker: VringWorker
        do {
            worker = try VringWorker(
                index: index, size: vrings[index].size, addresses: addresses, base: vrings[index].base,
                eventIndex: features & VirtioFeatures.ringEventIndex != 0, packed: isPacked, kick: kick, shared: shared,
                makeHandler: { [backend] completions in backend.makeRequestHandler(queue: index, completions: completions) },
                logger: logger)
        } catch {
            // The call eventfd stays the queue's, for the next kick.
            vrings[index].callFD = shared.state.withLock { $0.callFD.take() }
            throw error
        }
        vrings[index].shared = shared
        vrings[index].worker = worker
        logger.debug("queue \(index): started, size \(vrings[index].size), base 0x\(String(vrings[index].base, radix: 16))")
    }

    /// Stops the queue's worker if it runs; returns where it stands (the base a restart continues from).
    @discardableResult
    func stopVring(_ index: Int) -> UInt32 {
        guard let worker = vrings[index].worker else { return vrings[index].base }
        let next = worker.stopAndJoin()
        vrings[index].worker = nil
        if let shared = vrings[index].shared {
            vrings[index].callFD = shared.state.withLock { $0.callFD.take() }
        }
        vrings[index].shared = nil
        vrings[index].base = next
        logger.debug("queue \(index): stopped at 0x\(String(next, radix: 16))")
        return next
    }

    func setEnabled(_ index: Int, _ enabled: Bool) {
        vrings[index].enabled = enabled
        if let shared = vrings[index].shared {
            shared.state.withLock { $0.enabled = enabled }
            vrings[index].worker?.poke()
        }
    }

    /// Stops every queue, as when the front-end goes away: each answers what it handed out first.
    public func stopAll() {
        for i in vrings.indices { stopVring(i) }
    }

    // MARK: Migration

    /// The logging settings of queue `index` now: the log while VHOST_F_LOG_ALL is on, and the used ring's
    /// log address when its flag asks for it.
    func logging(_ index: Int) -> VringLogging {
        guard features & VirtioFeatures.logAll != 0, let dirtyLog else { return VringLogging(generation: loggingGeneration) }
        return VringLogging(
            log: dirtyLog, usedAt: vrings[index].logsUsed ? vrings[index].usedLogAddress : nil, generation: loggingGeneration)
    }

    /// Gives every running queue its logging settings and waits until each applies them, so that every
    /// completion after this returns is logged as the front-end asked.
    func updateLogging() {
        loggingGeneration += 1
        for i in vrings.indices {
            guard let shared = vrings[i].shared else { continue }
            shared.setLogging(logging(i))
            vrings[i].worker?.poke()
        }
        for i in vrings.indices {
            guard let shared = vrings[i].shared else { continue }
            if !shared.waitApplied(loggingGeneration, milliseconds: Self.loggingWaitMilliseconds) {
                logger.warning("queue \(i): busy for \(Self.loggingWaitMilliseconds / 1000) s; it logs from its next request on")
            }
        }
    }

    /// SET_LOG_BASE with VHOST_USER_PROTOCOL_F_LOG_SHMFD: maps the log (size and offset in the payload, the
    /// memory file attached).
    func setLogBase(_ message: VhostUserMessage) throws(VhostUserError) {
        let request = VhostUserRequest.setLogBase
        guard protocolFeatures & VhostUserProtocolFeatures.logSharedMemory != 0 else {
            throw .invalid(request, "VHOST_USER_PROTOCOL_F_LOG_SHMFD was not agreed")
        }
        guard message.payload.count == 16 else { throw .badPayloadSize(request, UInt32(message.payload.count)) }
        guard message.fds.count == 1, let fd = message.fds.take(0) else { throw .badDescriptorCount(request, message.fds.count) }
        let (size, offset) = message.payload.withUnsafeBytes {
            (UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)), UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
        }
        let (length, overflow) = size.addingReportingOverflow(offset)
        // One bit per 4 KiB page: 2^40 bytes of log would cover 2^55 bytes of guest memory, far past any guest.
        guard size > 0, !overflow, length <= 1 << 40 else { throw .invalid(request, "a log of \(size) bytes at offset \(offset)") }
        guard fd.borrowed.isRegularFile(atLeast: length) else {
            throw .invalid(request, "a log of \(size) bytes at offset \(offset) is not inside its memory file")
        }
        do {
            let mapping = try MemoryMapping(fd: fd.borrowed, length: Int(length))
            dirtyLog = try DirtyLog(mapping: mapping, offset: offset, size: size)
        } catch {
            throw .invalid(request, "cannot map a log of \(size) bytes: \(error)")
        }
        logger.debug("dirty-page log: \(size) bytes")
        updateLogging()
    }

    /// SET_DEVICE_STATE_FD: starts saving the device's state into the descriptor, or loading it from there.
    /// Returns the reply: 0x100 (success, no descriptor of ours) or 0x101 (failure).
    func setDeviceStateFD(_ message: VhostUserMessage) -> UInt64 {
        let request = VhostUserRequest.setDeviceStateFD
        let noDescriptor: UInt64 = 0x100
        guard let transfer = backend.deviceState, protocolFeatures & VhostUserProtocolFeatures.deviceState != 0 else {
            logger.error("vhost-user \(request): VHOST_USER_PROTOCOL_F_DEVICE_STATE was not agreed")
            return noDescriptor | 1
        }
        guard message.payload.count == 8, message.fds.count == 1, let fd = message.fds.take(0) else {
            logger.error("vhost-user \(request): \(message.payload.count) bytes and \(message.fds.count) descriptors")
            return noDescriptor | 1
        }
        let (rawDirection, phase) = message.payload.withUnsafeBytes {
            (UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)), UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        }
        guard let direction = DeviceStateDirection(rawValue: rawDirection), phase == 0 else {
            logger.error("vhost-user \(request): direction \(rawDirection), phase \(phase) (only 0 and 1, phase 0 \"stopped\")")
            return noDescriptor | 1
        }
        // The phase "stopped": the device is suspended, every queue stopped.
        guard vrings.allSatisfy({ $0.worker == nil }) else {
            logger.error("vhost-user \(request): a queue still runs; the state moves only while the device is suspended")
            return noDescriptor | 1
        }
        guard fd.borrowed.isPipeOrSocket else {
            logger.error("vhost-user \(request): the descriptor is not a pipe or a socket")
            return noDescriptor | 1
        }
        if let previous = stateJob.take() { _ = previous.finish() }
        do {
            switch direction {
            case .save:
                let state: [UInt8]
                do {
                    state = try transfer.saveState()
                } catch {
                    logger.error("migration: cannot save the device state: \(error)")
                    return noDescriptor | 1
                }
                logger.info("migration: saving \(state.count) bytes of device state")
                stateJob = try DeviceStateJob(writing: state, to: fd)
            case .load:
                stateJob = try DeviceStateJob(readingFrom: fd, limit: transfer.maxStateSize)
            }
        } catch {
            logger.error("vhost-user \(request): cannot start the transfer: \(error)")
            return noDescriptor | 1
        }
        return noDescriptor
    }

    /// CHECK_DEVICE_STATE: waits for the transfer to end and, when loading, takes the state up. 0 on success.
    func checkDeviceState() -> UInt64 {
        guard let job = stateJob.take(), let transfer = backend.deviceState else {
            logger.error("vhost-user CHECK_DEVICE_STATE: no device state transfer under way")
            return 1
        }
        switch job.finish() {
        case .failure(let error):
            logger.error("migration: the device state transfer failed: \(error)")
            return 1
        case .success(let bytes):
            guard job.direction == .load else { return 0 }
            do {
                try transfer.loadState(bytes)
                logger.info("migration: loaded \(bytes.count) bytes of device state")
                return 0
            } catch {
                logger.error("migration: cannot load the device state: \(error)")
                return 1
            }
        }
    }

    // MARK: Memory

    func mapRegion(_ region: cvfs_vhost_memory_region, fd: borrowing OwnedFD, _ request: VhostUserRequest) throws(VhostUserError) -> GuestMemoryRegion {
        let size = UInt64(littleEndian: region.size)
        let offset = UInt64(littleEndian: region.mmap_offset)
        let (length, overflow) = size.addingReportingOverflow(offset)
        guard size > 0, !overflow, length <= UInt64(Int.max) else { throw .invalid(request, "region of \(size) bytes at offset \(offset)") }
        // Mapped past the end of its file, a region faults (SIGBUS) at the first touch there.
        guard fd.borrowed.isRegularFile(atLeast: length) else {
            throw .invalid(request, "a region of \(size) bytes at offset \(offset) is not inside its memory file")
        }
        do {
            let mapping = try MemoryMapping(fd: fd.borrowed, length: Int(length))
            return try GuestMemoryRegion(
                guestAddress: UInt64(littleEndian: region.guest_address), size: size,
                userAddress: UInt64(littleEndian: region.user_address), mapping: mapping, offset: offset)
        } catch {
            throw .invalid(request, "cannot map a region of \(size) bytes: \(error)")
        }
    }

    func setMemoryTable(_ message: VhostUserMessage) throws(VhostUserError) {
        // SAFETY: loads are at offsets checked to lie inside the payload (header + count regions).
        let request = VhostUserRequest.setMemTable
        let header = 8
        let regionSize = MemoryLayout<cvfs_vhost_memory_region>.size
        guard message.payload.count >= header else { throw .badPayloadSize(request, UInt32(message.payload.count)) }
        let count = unsafe message.payload.withUnsafeBytes { unsafe Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
        guard count >= 1, count <= Int(CVFS_VHOST_MEMORY_BASELINE_NREGIONS),
              message.payload.count >= header + count * regionSize
        else { throw .badPayloadSize(request, UInt32(message.payload.count)) }
        guard message.fds.count == count else { throw .badDescriptorCount(request, message.fds.count) }
        var regions: [GuestMemoryRegion] = []
        for i in 0..<count {
            let region = unsafe message.payload.withUnsafeBytes {
                unsafe $0.loadUnaligned(fromByteOffset: header + i * regionSize, as: cvfs_vhost_memory_region.self)
            }
            guard let fd = message.fds.take(i) else { throw .badDescriptorCount(request, count) }
            regions.append(try mapRegion(region, fd: fd, request))
        }
        let map: GuestMemoryMap
        do { map = try GuestMemoryMap(regions: regions) } catch { throw .invalid(request, "regions overlap") }
        install(map)
        logger.debug("memory table: \(count) regions, \(regions.reduce(0) { $0 + $1.size } >> 20) MiB")
    }

    func addMemoryRegion(_ message: VhostUserMessage) throws(VhostUserError) {
        let request = VhostUserRequest.addMemReg
        let single = try message.decode(cvfs_vhost_single_memory_region.self, for: request)
        guard message.fds.count == 1, let fd = message.fds.take(0) else {
            throw .badDescriptorCount(request, message.fds.count)
        }
        guard UInt64(memory.regions.count) < Self.maxMemorySlots else { throw .invalid(request, "no free memory slot") }
        let region = try mapRegion(single.region, fd: fd, request)
        do { install(try memory.adding(region)) } catch { throw .invalid(request, "the region overlaps another") }
    }

    func removeMemoryRegion(_ message: VhostUserMessage) throws(VhostUserError) {
        let request = VhostUserRequest.remMemReg
        // QEMU sends the region's fd along with REM_MEM_REG in some versions; it is not needed and is closed.
        let single = try message.decode(cvfs_vhost_single_memory_region.self, for: request)
        do {
            install(try memory.removing(
                guestAddress: UInt64(littleEndian: single.region.guest_address),
                size: UInt64(littleEndian: single.region.size)))
        } catch {
            throw .invalid(request, "no such region")
        }
    }

    /// Makes `map` the memory of every queue; running workers switch at their next wake-up.
    func install(_ map: GuestMemoryMap) {
        memory = map
        memoryGeneration += 1
        for i in vrings.indices {
            guard let shared = vrings[i].shared else { continue }
            let generation = memoryGeneration
            shared.state.withLock {
                $0.memory = map
                $0.memoryGeneration = generation
            }
            vrings[i].worker?.poke()
        }
    }
}
