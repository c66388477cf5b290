// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import Logging
import VhostUser
import Virtqueue

/// The virtio-fs device (virtio 1.2 §5.11): queue 0 is the high-priority queue (FORGET), queues 1... carry
/// requests. Every queue is served by its own worker thread with its own FUSE session and scratch memory.
public final class VirtioFSBackend<FS: FileSystem>: VhostUserBackend {
    /// The most request queues offered to the front-end (QEMU's `num-request-queues`).
    public static var maxRequestQueues: Int { 64 }

    public let server: FUSEServer<FS>
    let logger: Logger
    /// Pool threads per request queue (`--thread-pool-size`); 0 serves requests on the queue's own thread.
    let threadPoolSize: Int

    /// `--tag`: the config space a front-end that asks the back-end gets (struct virtio_fs_config: the tag,
    /// NUL-padded to 36 bytes, then the request queues, little-endian); nil without a tag.
    public let configSpace: [UInt8]?

    /// The FUSE session's state for a live migration (nil: the device offers none).
    public let deviceState: (any DeviceStateTransfer)?

    public init(
        server: FUSEServer<FS>, threadPoolSize: Int = 0, tag: String? = nil, deviceState: (any DeviceStateTransfer)? = nil,
        logger: Logger
    ) {
        self.server = server
        self.deviceState = deviceState
        self.threadPoolSize = threadPoolSize
        self.logger = logger
        if let tag {
            var config = virtio_fs_config()
            withUnsafeMutableBytes(of: &config.tag) { raw in
                for (i, byte) in tag.utf8.prefix(raw.count).enumerated() { raw[i] = byte }
            }
            config.num_request_queues = UInt32(Self.maxRequestQueues).littleEndian
            configSpace = withUnsafeBytes(of: config) { Array($0) }
        } else {
            configSpace = nil
        }
    }

    public var maxQueues: Int { 1 + Self.maxRequestQueues }
    public var maxQueueSize: Int { 32768 }
    public var deviceFeatures: UInt64 { 0 }

    public func makeRequestHandler(queue index: Int, completions: DeferredCompletions) -> any VringRequestHandler {
        let deferred = DeferredWork()
        let session = FUSESession(server: server, label: "queue \(index)", queue: index, deferred: deferred) { token, length in
            completions.complete(head: UInt16(truncatingIfNeeded: token), length: length)
        }
        // The hiprio queue (0) carries only FORGETs: it never needs a pool.
        var pool: RequestPool<FS>? = nil
        if threadPoolSize > 0 && index > 0 {
            do {
                pool = try RequestPool(
                    size: threadPoolSize, server: server, deferred: deferred, completions: completions, logger: logger,
                    queue: index)
            } catch {
                logger.error("queue \(index): cannot start the thread pool (\(error)); serving requests inline")
            }
        }
        return QueueHandler(session: session, pool: pool, deferred: deferred)
    }

    public func reset() {
        server.statistics?.note(.deviceReset)
        server.reset()
    }

    /// Hands each descriptor chain to the queue's FUSE session: the readable buffers hold the request, the
    /// writable ones receive the reply.
    final class QueueHandler: VringRequestHandler {
        let session: FUSESession<FS>
        let pool: RequestPool<FS>?
        let deferred: DeferredWork

        init(session: FUSESession<FS>, pool: RequestPool<FS>?, deferred: DeferredWork) {
            self.session = session
            self.pool = pool
            self.deferred = deferred
        }

        func handle(_ chain: DescriptorChain) -> UInt32? {
            // SAFETY: the chain's buffers are valid during this call, and `chain.memory` keeps them mapped for a
            // deferred reply.
            if let pool, pool.submit(chain) { return nil }
            return unsafe session.handle(
                readable: chain.readableBuffers, writable: chain.writableBuffers, token: UInt64(chain.headIndex),
                owner: chain.memoryOwner)
        }

        /// Lock waits end with EINTR; pool jobs run to their end and post their completions.
        func stopDeferred() {
            deferred.cancelAll()
        }
    }
}

/// Moves the FUSE session (the nodes and handles the guest holds) between daemons in a live migration.
public final class SessionTransfer<FS: MigratableFileSystem>: DeviceStateTransfer {
    let server: FUSEServer<FS>
    /// 1 GiB: room for some ten million nodes with their paths.
    public var maxStateSize: Int { 1 << 30 }

    public init(server: FUSEServer<FS>) { self.server = server }

    public func saveState() throws(DeviceStateError) -> [UInt8] {
        do {
            let state = try server.saveState()
            server.statistics?.note(.migrationSaved)
            return state
        } catch { throw DeviceStateError(error.description) }
    }

    public func loadState(_ state: [UInt8]) throws(DeviceStateError) {
        do {
            try server.loadState(state)
            server.statistics?.note(.migrationLoaded)
        } catch { throw DeviceStateError(error.description) }
    }
}
