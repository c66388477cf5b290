// SPDX-License-Identifier: Apache-2.0

import FUSE
import Synchronization
import VFSSystem

/// What identifies a host file: its device, inode number and mount id (two mounts of one file system can
/// show the same device and inode), and its birth time where the file system keeps one. A node held by file
/// handle holds no descriptor, so the host may free its inode and give the number to a new file while the
/// guest still holds the node (its FORGET on its way): without the birth time the new file would be taken for
/// the old node, whose handle is stale (ESTALE for everything done through it).
public struct InodeKey: Hashable, Sendable {
    public var device: UInt64
    public var inode: UInt64
    public var mountID: UInt64
    public var birth: UInt64

    public init(device: UInt64, inode: UInt64, mountID: UInt64, birth: UInt64 = 0) {
        self.device = device
        self.inode = inode
        self.mountID = mountID
        self.birth = birth
    }

    public init(_ stat: FileStat) {
        // Packed into nanoseconds since the epoch (wrapping: only equality matters); 0 when there is none.
        let birth = UInt64(bitPattern: stat.birthTime.seconds) &* 1_000_000_000 &+ UInt64(stat.birthTime.nanoseconds)
        self.init(device: stat.device, inode: stat.inode, mountID: stat.mountID, birth: birth)
    }
}

/// A host file the guest knows by a node id: an `O_PATH` descriptor that never follows a symlink, or, with
/// `--inode-file-handles`, a kernel file handle that holds no descriptor at all.
public final class InodeData: Sendable {
    public let nodeID: UInt64
    public let key: InodeKey
    public let fileType: FileType
    /// The `O_PATH` descriptor, or -1 when the node is held as `handle`.
    let descriptor: CInt
    /// The file handle, when the node holds no descriptor.
    let handle: KernelFileHandle?
    /// The descriptor of the handle's mount (shared with the file system's mount table), for open_by_handle_at.
    let mount: MountTable.Mount?
    /// What the file looked like when the guest last had it open (`--cache auto`): if it still looks the same
    /// at the next open, the guest may keep its page cache.
    let lastSeen = Mutex<FileVersion>(.unknown)
    /// An `O_PATH` descriptor that keeps a node held by handle alive once its last name is gone, or -1. A
    /// guest that does not open files (PassthroughFileSystem.opensFiles) may still be reading one it unlinked,
    /// and the host frees an inode with no name and no open descriptor: its handle would then be stale.
    let pinned = Atomic<CInt>(-1)
    /// `--cache auto`: when this daemon last changed the node's file (`WallClock` ns; 0: not known to have). See
    /// ChangeTracking.swift.
    let ownChange = Atomic<Int64>(0)
    /// `--cache auto`: the ctime (ns) of the latest change seen that this daemon did not make; 0: none seen.
    let othersChange = Atomic<Int64>(0)
    /// `--cache auto`: until when (`WallClock` ns) the node's timeouts are short, for that change; 0: they are not.
    let shortUntil = Atomic<Int64>(0)
    /// `--cache auto`: the ctime (ns) of the attributes last sent to the guest; 0 when the guest holds none that we
    /// know of, or dropped them itself (after a change made through this daemon).
    let told = Atomic<Int64>(0)

    init(nodeID: UInt64, key: InodeKey, fileType: FileType, fd: consuming OwnedFD) {
        self.nodeID = nodeID
        self.key = key
        self.fileType = fileType
        self.descriptor = fd.release()
        self.handle = nil
        self.mount = nil
    }

    /// A node a migration brought whose file the destination could not find (`--migration-on-error
    /// guest-error`): it holds nothing, and every request on it fails with EIO until the guest forgets it.
    init(lostNodeID nodeID: UInt64, fileType: FileType) {
        self.nodeID = nodeID
        self.key = InodeKey(device: 0, inode: 0, mountID: 0, birth: nodeID)
        self.fileType = fileType
        self.descriptor = -1
        self.handle = nil
        self.mount = nil
    }

    /// Whether the node is one a migration could not find again (see `init(lostNodeID:fileType:)`).
    public var isLost: Bool { descriptor < 0 && handle == nil }

    init(nodeID: UInt64, key: InodeKey, fileType: FileType, handle: KernelFileHandle, mount: MountTable.Mount) {
        self.nodeID = nodeID
        self.key = key
        self.fileType = fileType
        self.descriptor = -1
        self.handle = handle
        self.mount = mount
    }

    /// The node's own descriptor (the root's, or any node held by descriptor).
    func fd() -> FileDescriptor { FileDescriptor(rawValue: descriptor) }

    /// Whether a descriptor pins the node (see `pinned`).
    public var isPinned: Bool { pinned.load(ordering: .relaxed) >= 0 }

    /// The pinned descriptor of a node held by handle, if it was pinned.
    var pinnedFD: FileDescriptor? {
        let fd = pinned.load(ordering: .acquiring)
        return fd >= 0 ? FileDescriptor(rawValue: fd) : nil
    }

    /// Keeps `fd` (an `O_PATH` descriptor of this very file) until the node goes; false if one is kept already.
    func pin(_ fd: consuming OwnedFD) -> Bool {
        let raw = fd.release()
        if pinned.compareExchange(expected: -1, desired: raw, ordering: .acquiringAndReleasing).exchanged { return true }
        _ = OwnedFD(taking: raw)
        return false
    }

    /// Whether the node holds a descriptor (and not a handle).
    public var holdsDescriptor: Bool { descriptor >= 0 }

    deinit {
        if descriptor >= 0 { _ = OwnedFD(taking: descriptor) }
        let pinned = pinned.load(ordering: .relaxed)
        if pinned >= 0 { _ = OwnedFD(taking: pinned) }
    }
}

/// The parts of a file's attributes that change whenever its data does: size, mtime and ctime to the ns.
/// Packed into 32 bytes, as every node keeps one.
public struct FileVersion: Equatable, Sendable {
    var size: Int64
    var modificationSeconds: Int64
    var changeSeconds: Int64
    /// mtime's nanoseconds in the high half, ctime's in the low half.
    var nanoseconds: UInt64

    public init(_ stat: FileStat) {
        size = stat.size
        modificationSeconds = stat.modificationTime.seconds
        changeSeconds = stat.changeTime.seconds
        nanoseconds = UInt64(stat.modificationTime.nanoseconds) << 32 | UInt64(stat.changeTime.nanoseconds)
    }

    private init(size: Int64) {
        self.size = size
        modificationSeconds = 0
        changeSeconds = 0
        nanoseconds = 0
    }

    /// No version seen yet: equal to no file's (a size is never negative).
    static let unknown = FileVersion(size: -1)
}

/// How a new node is held: its descriptor, or a handle that replaces it.
public enum NodeHolding: Sendable {
    case descriptor
    case handle(KernelFileHandle, mount: MountTable.Mount)
}

/// The nodes the guest holds, with their lookup counts.
///
/// Sharded by the host identity so queues rarely meet on a lock: a node id carries its shard in its low bits,
/// so both lookups by id (every request) and by identity (LOOKUP) go to one shard without a global lock.
public final class InodeStore: Sendable {
    static let shardBits: UInt64 = 6
    static var shardCount: Int { 1 << Int(shardBits) }
    static var shardMask: UInt64 { UInt64(shardCount - 1) }

    struct Node {
        let data: InodeData
        var lookups: UInt64
    }

    struct Shard: ~Copyable {
        var byID = IDTable<Node>()
        var byKey = KeyIndex()
        var nextCounter: UInt64 = 1
        /// `--cache auto`: when this daemon last changed files whose nodes the guest forgot, for those it changed
        /// lately (see `forget`); taken back by the node when the guest looks the file up again.
        var recentOwnChanges: [InodeKey: Int64] = [:]

        /// The id of the node for `key`, if this shard holds it.
        func find(_ key: InodeKey) -> UInt64? {
            byKey.find(key) { byID[$0]?.data.key }
        }

        /// Adds one lookup to the node for `key`, if this shard holds it.
        mutating func addLookup(_ key: InodeKey) -> InodeData? {
            guard let id = find(key), var node = byID[id] else { return nil }
            node.lookups += 1
            byID[id] = node
            return node.data
        }
    }

    /// The shared directory; id 1, never forgotten.
    public let root: InodeData
    private let shards: Shards<Shard>
    /// Nodes a migration brought whose id lies in another shard than their file's identity hashes to here
    /// (the hash is seeded per process): found by identity through this map until the guest forgets them.
    /// Empty, and never locked, unless a migration brought nodes.
    private let aliases = Mutex<[InodeKey: UInt64]>([:])
    private let aliasCount = Atomic<Int>(0)

    public init(root fd: consuming OwnedFD, stat: FileStat) {
        // The root is always held by its descriptor.
        root = InodeData(nodeID: fuseRootID, key: InodeKey(stat), fileType: stat.fileType, fd: fd)
        shards = Shards(count: Self.shardCount) { Shard() }
    }

    @inline(__always)
    static func shard(of key: InodeKey) -> Int {
        var hasher = Hasher()
        hasher.combine(key)
        return Int(UInt64(bitPattern: Int64(hasher.finalize())) & shardMask)
    }

    /// The node with id `nodeID`, or nil when the guest names one it does not hold.
    @inline(__always)
    public func get(_ nodeID: UInt64) -> InodeData? {
        if nodeID == fuseRootID { return root }
        return shards.withLock(Int(nodeID & Self.shardMask)) { $0.byID[nodeID]?.data }
    }

    /// Adds one lookup to the node for `key`, creating it with `fd` if the guest does not hold it yet; `holding`
    /// decides, for a new node only, whether it keeps `fd` or a file handle instead.
    /// - Returns: the node (a new `fd` that is not needed is closed).
    public func lookup(
        key: InodeKey, fileType: FileType, fd: consuming OwnedFD,
        holding: (FileDescriptor) throws(Errno) -> NodeHolding = { _ in .descriptor }
    ) throws(Errno) -> InodeData {
        if key == root.key { return root }
        if aliasCount.load(ordering: .relaxed) > 0, let known = aliased(key, addLookup: true) { return known }
        let shardIndex = Self.shard(of: key)
        var pending: OwnedFD? = fd
        let result = shards.withLock(shardIndex) { shard -> Result<InodeData, Errno> in
            if let known = shard.addLookup(key) { return .success(known) }
            let id = shard.nextCounter << Self.shardBits | UInt64(shardIndex)
            let data: InodeData
            let fd = pending.take()!
            switch Result(catching: { () throws(Errno) -> NodeHolding in try holding(fd.borrowed) }) {
            case .failure(let error): return .failure(error)
            case .success(.descriptor): data = InodeData(nodeID: id, key: key, fileType: fileType, fd: fd)
            case .success(.handle(let handle, let mount)):
                data = InodeData(nodeID: id, key: key, fileType: fileType, handle: handle, mount: mount)
            }
            shard.nextCounter += 1
            if !shard.recentOwnChanges.isEmpty, let own = shard.recentOwnChanges.removeValue(forKey: key) {
                data.ownChange.store(own, ordering: .relaxed)
            }
            shard.byID[id] = Node(data: data, lookups: 1)
            shard.byKey.insert(key, id: id) { shard.byID[$0]?.data.key }
            return .success(data)
        }
        return try result.get()
    }

    /// The node for `key` if the guest holds it, without adding a lookup.
    public func find(key: InodeKey) -> InodeData? {
        if key == root.key { return root }
        if aliasCount.load(ordering: .relaxed) > 0, let known = aliased(key, addLookup: false) { return known }
        return shards.withLock(Self.shard(of: key)) { shard in shard.find(key).flatMap { shard.byID[$0]?.data } }
    }

    /// Adds one lookup to the node for `key` if the guest holds it already; nil otherwise.
    public func lookupExisting(key: InodeKey) -> InodeData? {
        if key == root.key { return root }
        if aliasCount.load(ordering: .relaxed) > 0, let known = aliased(key, addLookup: true) { return known }
        return shards.withLock(Self.shard(of: key)) { $0.addLookup(key) }
    }

    /// Nodes gone since the free memory was last given back to the kernel (see `forget`).
    private let goneSinceTrim = Atomic<Int>(0)
    /// After this many nodes go (about 3 MiB of them), the daemon's free memory goes back to the kernel; and
    /// when a shard empties after at least `trimEmptied` went (the end of a guest's mass FORGET).
    static let trimEvery = 1 << 14
    static let trimEmptied = 256

    /// Files this daemon changed lately whose nodes are gone, kept per shard (`rememberingOwnChangesSince`).
    static let recentOwnChangesPerShard = 1024

    /// Subtracts `count` lookups; the node goes away (and its fd is closed once unused) at zero.
    /// - Parameter since: `--cache auto`: a node that goes keeps, for its file's next node, when this daemon last
    ///   changed it, if that was at `since` or later: a guest that drops its caches and looks again at files it has
    ///   just written still finds them its own (see ChangeTracking.swift).
    /// - Returns: whether the node went away.
    @discardableResult
    public func forget(_ nodeID: UInt64, count: UInt64, rememberingOwnChangesSince since: Int64? = nil) -> Bool {
        guard nodeID != fuseRootID else { return false }
        var emptied = false
        let gone = shards.withLock(Int(nodeID & Self.shardMask)) { shard -> Bool in
            guard var node = shard.byID[nodeID] else { return false }
            if node.lookups > count {
                node.lookups -= count
                shard.byID[nodeID] = node
                return false
            }
            // Out of the index first, while the id table still names every node the index holds.
            shard.byKey.remove(node.data.key, id: nodeID) { shard.byID[$0]?.data.key }
            shard.byID[nodeID] = nil
            emptied = shard.byID.count == 0
            if let since {
                let own = node.data.ownChange.load(ordering: .relaxed)
                if own >= since && !node.data.isLost {
                    if shard.recentOwnChanges.count >= Self.recentOwnChangesPerShard {
                        // Full: what is too old to matter goes; if that is not enough, everything (the files' next
                        // nodes then get the short timeout of a file changed by others lately, once).
                        shard.recentOwnChanges = shard.recentOwnChanges.filter { $0.value >= since }
                        if shard.recentOwnChanges.count >= Self.recentOwnChangesPerShard { shard.recentOwnChanges = [:] }
                    }
                    shard.recentOwnChanges[node.data.key] = own
                }
            }
            return true
        }
        if gone && aliasCount.load(ordering: .relaxed) > 0 { removeAlias(nodeID) }
        // glibc keeps the pages of freed nodes (spread over every queue thread's arena) until asked: a guest
        // that forgets a large tree would leave the daemon at its peak size for good.
        guard gone else { return false }
        let since = goneSinceTrim.add(1, ordering: .relaxed).newValue
        if since >= Self.trimEvery || (emptied && since >= Self.trimEmptied) {
            goneSinceTrim.store(0, ordering: .relaxed)
            ProcessSettings.returnFreedMemory()
        }
        return true
    }

    /// Forgets every node except the root.
    public func clear() {
        aliases.withLock { $0.removeAll() }
        aliasCount.store(0, ordering: .relaxed)
        for i in 0..<shards.count {
            shards.withLock(i) { shard in
                shard.byID.removeAll()
                shard.byKey.removeAll()
                shard.recentOwnChanges = [:]
            }
        }
    }

    /// How many nodes the guest holds, besides the root.
    public var count: Int {
        (0..<shards.count).reduce(0) { total, i in total + shards.withLock(i) { $0.byID.count } }
    }

    // MARK: Migration

    /// The node an alias names for `key`, with one more lookup when `addLookup`; nil when there is none.
    private func aliased(_ key: InodeKey, addLookup: Bool) -> InodeData? {
        guard let id = aliases.withLock({ $0[key] }) else { return nil }
        return shards.withLock(Int(id & Self.shardMask)) { shard -> InodeData? in
            guard var node = shard.byID[id], node.data.key == key else { return nil }
            if addLookup {
                node.lookups += 1
                shard.byID[id] = node
            }
            return node.data
        }
    }

    private func removeAlias(_ nodeID: UInt64) {
        aliases.withLock { aliases in
            guard let key = aliases.first(where: { $0.value == nodeID })?.key else { return }
            aliases[key] = nil
            aliasCount.store(aliases.count, ordering: .relaxed)
        }
    }

    /// Every node the guest holds but the root, with its lookup count, in no order.
    public func snapshot() -> [(node: InodeData, lookups: UInt64)] {
        var nodes: [(node: InodeData, lookups: UInt64)] = []
        for i in 0..<shards.count {
            shards.withLock(i) { shard in shard.byID.forEach { _, node in nodes.append((node.data, node.lookups)) } }
        }
        return nodes
    }

    /// Adds a node a migration brought, under the id and lookup count the guest knows it by; `fd` is its file,
    /// found again here (nil: lost, see `InodeData.init(lostNodeID:fileType:)`).
    /// - Throws: `Errno.fileExists` when the id is the root's, 0, 2^48 or more, or taken, or when another node has that file.
    public func restore(
        nodeID: UInt64, lookups: UInt64, key: InodeKey, fileType: FileType, fd: consuming OwnedFD?,
        holding: (FileDescriptor) throws(Errno) -> NodeHolding = { _ in .descriptor }
    ) throws(Errno) {
        // Ids this store makes stay below 2^48 (KeyIndex keeps a tag above them); a state's may not be larger.
        guard nodeID != 0, nodeID != fuseRootID, nodeID < 1 << 48, lookups > 0 else { throw .fileExists }
        let shardIndex = Int(nodeID & Self.shardMask)
        let data: InodeData
        if let fd = fd.take() {
            guard key != root.key, find(key: key) == nil else { throw .fileExists }
            switch try holding(fd.borrowed) {
            case .descriptor: data = InodeData(nodeID: nodeID, key: key, fileType: fileType, fd: fd)
            case .handle(let handle, let mount):
                data = InodeData(nodeID: nodeID, key: key, fileType: fileType, handle: handle, mount: mount)
            }
        } else {
            data = InodeData(lostNodeID: nodeID, fileType: fileType)
        }
        let indexedHere = !data.isLost && Self.shard(of: key) == shardIndex
        try shards.withLock(shardIndex) { (shard) throws(Errno) in
            guard shard.byID[nodeID] == nil else { throw .fileExists }
            shard.byID[nodeID] = Node(data: data, lookups: lookups)
            if indexedHere { shard.byKey.insert(key, id: nodeID) { shard.byID[$0]?.data.key } }
            shard.nextCounter = max(shard.nextCounter, (nodeID >> Self.shardBits) + 1)
        }
        if !data.isLost && !indexedHere {
            aliases.withLock { aliases in
                aliases[key] = nodeID
                aliasCount.store(aliases.count, ordering: .relaxed)
            }
        }
    }

    /// The lookup count of a node (tests).
    public func lookupCount(_ nodeID: UInt64) -> UInt64? {
        shards.withLock(Int(nodeID & Self.shardMask)) { $0.byID[nodeID]?.lookups }
    }
}
