// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Logging
import Synchronization
import VFSSystem

/// Settings of the FUSE server that do not depend on the file system.
public struct FUSEServerOptions: Sendable {
    /// Largest WRITE payload (max_write).
    public var maxWrite: UInt32 = 1 << 20
    /// Offer READDIRPLUS to the guest.
    public var readdirplus: Bool = true
    /// Count what is served (`FUSEStatistics`, `--metrics-socket`); off, a request pays one test of a nil.
    public var statistics: Bool = false
    public init(maxWrite: UInt32 = 1 << 20, readdirplus: Bool = true, statistics: Bool = false) {
        self.maxWrite = maxWrite
        self.readdirplus = readdirplus
        self.statistics = statistics
    }
}

/// Decodes FUSE requests, calls the file system and encodes its replies. It knows nothing of the transport:
/// a `FUSESession` per queue feeds it request bytes and gives it the guest's reply buffers.
public final class FUSEServer<FS: FileSystem>: Sendable {
    /// The protocol version offered: 7.41 (a 6.12 guest agrees 7.41, a 6.1 guest 7.37).
    public static var kernelMajor: UInt32 { UInt32(FUSE_KERNEL_VERSION) }
    public static var kernelMinor: UInt32 { UInt32(CVFS_FUSE_KERNEL_MINOR_VERSION) }
    /// The oldest guest protocol accepted (as virtiofsd).
    public static var minimumMinor: UInt32 { 27 }

    public let fileSystem: FS
    public let options: FUSEServerOptions
    let logger: Logger
    /// Requests that failed with EIO or ENOTCONN, reported at most once per 10 s (`FUSESession.reportStorageError`).
    let storageErrors = IntervalReport(intervalNanoseconds: 10_000_000_000)
    /// The minor version agreed in INIT; 0 before INIT.
    let negotiatedMinor = Atomic<UInt32>(0)
    /// The INIT flags agreed.
    let negotiatedFlags = Atomic<UInt64>(0)
    /// SETLKW requests waiting, over every queue (`FUSELimits.lockWaits`), by request id for INTERRUPT.
    let lockWaits = LockWaits(limit: FUSELimits.lockWaits)

    /// What has been served, when `options.statistics` is on.
    public let statistics: FUSEStatistics?

    public init(fileSystem: FS, options: FUSEServerOptions = FUSEServerOptions(), logger: Logger) {
        self.fileSystem = fileSystem
        self.options = options
        self.logger = logger
        statistics = options.statistics ? FUSEStatistics() : nil
    }

    /// The statistics in the Prometheus text format, with the file system's census; nil when they are off.
    public func metrics(descriptors: Int?) -> String? {
        statistics?.exposition(census: fileSystem.census, descriptors: descriptors, errnoName: Errno.symbolicName)
    }

    /// Whether INIT has completed.
    public var isInitialized: Bool { negotiatedMinor.load(ordering: .acquiring) != 0 }

    /// The flags agreed with the guest in INIT.
    public var flags: FUSEInitFlags { FUSEInitFlags(rawValue: negotiatedFlags.load(ordering: .relaxed)) }

    /// The front-end went away or reset the device, or the guest sent DESTROY: forget the session.
    public func reset() {
        if isInitialized {
            endSession(because: "ended")
            statistics?.note(.sessionEnded)
        }
        negotiatedMinor.store(0, ordering: .releasing)
        negotiatedFlags.store(0, ordering: .relaxed)
    }

    /// Drops everything the guest held, with one log line of what that was and what is left.
    func endSession(because reason: String) {
        let before = fileSystem.census
        fileSystem.destroy()
        if let before, let after = fileSystem.census {
            logger.info("FUSE session \(reason): dropped \(before.nodes - after.nodes) nodes and \(before.handles - after.handles) handles; now \(after)")
        }
    }

    /// Flags the server always wants when the kernel offers them, whatever the file system.
    static var serverFlags: FUSEInitFlags {
        // DIRECT_IO_ALLOW_MMAP: a file opened with DIRECT_IO (cache never or metadata) can still be mapped
        // shared, as locally; the guest kernel keeps the mapping's pages coherent with its direct writes.
        [.asyncRead, .bigWrites, .autoInvalidateData, .asyncDirectIO, .parallelDirectoryOps,
         .maxPages, .initExtended, .directIOAllowMmap]
    }

    /// INIT: agrees on a version and flags. Encodes `fuse_init_out` into `reply`.
    func initialize(_ input: fuse_init_in, inputSize: Int, into reply: inout ReplyBuilder) throws(Errno) {
        guard input.major == Self.kernelMajor else {
            guard input.major > Self.kernelMajor else { throw .protocolError }
            // A newer major: answer with ours only, and the kernel will retry with it.
            var out = fuse_init_out()
            out.major = Self.kernelMajor
            out.minor = Self.kernelMinor
            reply.append(out)
            return
        }
        guard input.minor >= Self.minimumMinor else {
            logger.error("guest FUSE 7.\(input.minor) is older than 7.\(Self.minimumMinor)")
            throw .protocolError
        }
        var offered = FUSEInitFlags(rawValue: UInt64(input.flags))
        if offered.contains(.initExtended) && inputSize >= MemoryLayout<fuse_init_in>.size {
            offered.formUnion(FUSEInitFlags(rawValue: UInt64(input.flags2) << 32))
        }
        // An INIT while a session is open: the guest rebooted, or its driver was reset, without a DESTROY (QEMU
        // stops the rings at a reset, and the new kernel mounts again). Nothing of the old session may stay.
        if isInitialized {
            endSession(because: "replaced by a new INIT (the guest rebooted or reset its device)")
            statistics?.note(.sessionReplaced)
        }
        let request = InitRequest(major: input.major, minor: input.minor, maxReadahead: input.max_readahead, flags: offered)
        var wanted = Self.serverFlags.union(try fileSystem.initialize(request))
        if options.readdirplus {
            wanted.formUnion([.doReaddirplus, .readdirplusAuto])
        }
        let agreed = offered.intersection(wanted)
        let minor = min(input.minor, Self.kernelMinor)

        var out = fuse_init_out()
        out.major = Self.kernelMajor
        out.minor = minor
        out.max_readahead = input.max_readahead
        out.flags = UInt32(truncatingIfNeeded: agreed.rawValue)
        out.flags2 = UInt32(truncatingIfNeeded: agreed.rawValue >> 32)
        out.max_background = UInt16.max
        out.congestion_threshold = UInt16.max / 4 * 3
        out.max_write = options.maxWrite
        out.time_gran = 1
        out.max_pages = UInt16(min(UInt32(UInt16.max), (options.maxWrite + 4095) / 4096))
        reply.append(out)

        negotiatedFlags.store(agreed.rawValue, ordering: .relaxed)
        negotiatedMinor.store(minor, ordering: .releasing)
        statistics?.note(.sessionStarted)
        logger.info("FUSE session: guest 7.\(input.minor), agreed 7.\(minor), flags 0x\(String(agreed.rawValue, radix: 16))\(fileSystem.census.map { "; \($0)" } ?? "")")
    }
}
