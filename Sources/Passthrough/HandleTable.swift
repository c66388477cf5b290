// SPDX-License-Identifier: Apache-2.0

import Synchronization
import VFSSystem

/// An open file or directory of the guest's.
public final class HandleData: Sendable {
    public let fd: OwnedFD
    /// Serialises READDIR on one directory handle: its position is shared state.
    let directoryLock = Mutex(())
    /// The node whose version is recorded when this handle, open for writing, is released (`--cache auto`).
    let writer: InodeData?
    /// Whether the descriptor was opened with O_APPEND, where every write goes to the end of the file.
    let appending: Bool

    init(fd: consuming OwnedFD, writer: InodeData? = nil, appending: Bool = false) {
        self.fd = fd
        self.writer = writer
        self.appending = appending
    }

    /// Runs `body` with the descriptor; the handle, and so its descriptor, stays alive until body returns. (A
    /// RELEASE racing this request removes the handle from the table; a descriptor number taken from a
    /// handle the caller no longer holds could be closed, and reused, before it is used.)
    @inline(__always)
    public func withDescriptor<T, E: Error>(_ body: (FileDescriptor) throws(E) -> T) throws(E) -> T { try body(fd.borrowed) }
}

/// Open handles, sharded by handle number. A handle number is never a raw descriptor, so the guest cannot
/// name one of the daemon's own descriptors.
public final class HandleTable: Sendable {
    static let shardBits: UInt64 = 4
    static var shardCount: Int { 1 << Int(shardBits) }
    static var shardMask: UInt64 { UInt64(shardCount - 1) }

    struct Shard: ~Copyable {
        var handles = IDTable<HandleData>()
        var nextCounter: UInt64 = 1
    }

    private let shards: Shards<Shard>
    private let nextShard = Atomic<UInt64>(0)

    public init() {
        shards = Shards(count: Self.shardCount) { Shard() }
    }

    /// Stores an open descriptor and returns its handle number; `writer` is the node of a file opened for writing,
    /// `appending` whether it was opened with O_APPEND.
    public func insert(_ fd: consuming OwnedFD, writer: InodeData? = nil, appending: Bool = false) -> UInt64 {
        let data = HandleData(fd: fd, writer: writer, appending: appending)
        let shardIndex = nextShard.wrappingAdd(1, ordering: .relaxed).oldValue & Self.shardMask
        return shards.withLock(Int(shardIndex)) { shard in
            let handle = shard.nextCounter << Self.shardBits | shardIndex
            shard.nextCounter += 1
            shard.handles[handle] = data
            return handle
        }
    }

    /// The handle's data, or nil when the guest names a handle it does not hold.
    @inline(__always)
    public func get(_ handle: UInt64) -> HandleData? {
        shards.withLock(Int(handle & Self.shardMask)) { $0.handles[handle] }
    }

    /// Removes a handle and returns it; its descriptor is closed once no request uses it.
    @discardableResult
    public func remove(_ handle: UInt64) -> HandleData? {
        shards.withLock(Int(handle & Self.shardMask)) { $0.handles.removeValue(forKey: handle) }
    }

    /// Every open handle, with its number, in no order (a migration's snapshot).
    public func snapshot() -> [(handle: UInt64, data: HandleData)] {
        var all: [(handle: UInt64, data: HandleData)] = []
        for i in 0..<shards.count { shards.withLock(i) { $0.handles.forEach { all.append(($0, $1)) } } }
        return all
    }

    /// Adds a handle a migration brought, under the number the guest knows it by.
    /// - Throws: `Errno.fileExists` when the number is 0, 2^48 or more, or taken.
    public func restore(_ handle: UInt64, fd: consuming OwnedFD, writer: InodeData?, appending: Bool) throws(Errno) {
        // Handle numbers this table makes stay far below 2^48: a larger one could wrap the counter onto taken ones.
        guard handle != 0, handle < 1 << 48 else { throw .fileExists }
        let data = HandleData(fd: fd, writer: writer, appending: appending)
        try shards.withLock(Int(handle & Self.shardMask)) { (shard) throws(Errno) in
            guard shard.handles[handle] == nil else { throw .fileExists }
            shard.handles[handle] = data
            shard.nextCounter = max(shard.nextCounter, (handle >> Self.shardBits) + 1)
        }
    }

    public func clear() {
        for i in 0..<shards.count { shards.withLock(i) { $0.handles.removeAll() } }
    }

    public var count: Int { (0..<shards.count).reduce(0) { total, i in total + shards.withLock(i) { $0.handles.count } } }
}
