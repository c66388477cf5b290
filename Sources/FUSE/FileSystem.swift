// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import VFSSystem

/// The node id of the root directory (`FUSE_ROOT_ID`).
public let fuseRootID: UInt64 = 1

/// A security label the guest wants on a file it creates (FUSE_SECURITY_CTX): an xattr name and its value.
/// Valid only during the request.
// SAFETY: A view into the request, valid during it; used only within the call.
@safe
public struct SecurityContext: @unchecked Sendable, Equatable {
    public let name: UnsafeRawBufferPointer
    public let value: UnsafeRawBufferPointer

    public init(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        unsafe self.name = unsafe name
        unsafe self.value = unsafe value
    }

    /// The name as a C string (it is NUL-terminated in the request).
    public var nameCString: UnsafePointer<CChar> { unsafe name.baseAddress!.assumingMemoryBound(to: CChar.self) }

    public static func == (a: SecurityContext, b: SecurityContext) -> Bool {
        // SAFETY: both views are valid during the request that carries them.
        unsafe a.name.elementsEqual(b.name) && a.value.elementsEqual(b.value)
    }
}

/// Who sent a request, from its `fuse_in_header`.
public struct RequestContext: Sendable, Equatable {
    public var unique: UInt64
    public var nodeID: UInt64
    public var uid: UInt32
    public var gid: UInt32
    public var pid: UInt32
    /// The label for what a creating request makes, when the guest sent one.
    public var securityContext: SecurityContext?
    /// With CREATE_SUPP_GROUP, for a creating request: the group of the new file's parent, when it is one of the
    /// caller's supplementary groups (not its fsgid). The guest kernel sends it so that the server can act with
    /// that group as the caller locally would (permission to create, a setgid bit kept).
    public var supplementaryGroup: UInt32?
    /// OPEN and CREATE with FUSE_OPEN_KILL_SUIDGID (HANDLE_KILLPRIV_V2): the caller truncates the file without
    /// CAP_FSETID, so its set-id bits go as with a write.
    public var killSetIDBitsOnTruncate = false

    public init(unique: UInt64 = 0, nodeID: UInt64 = 0, uid: UInt32 = 0, gid: UInt32 = 0, pid: UInt32 = 0) {
        self.unique = unique
        self.nodeID = nodeID
        self.uid = uid
        self.gid = gid
        self.pid = pid
    }
}

/// A cache timeout sent to the guest.
public struct Timeout: Sendable, Comparable {
    public var seconds: UInt64
    public var nanoseconds: UInt32
    public init(seconds: UInt64, nanoseconds: UInt32 = 0) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
    public static let zero = Timeout(seconds: 0)

    public static func < (a: Timeout, b: Timeout) -> Bool {
        (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
    }
}

/// The answer to LOOKUP (and each READDIRPLUS entry): a node whose lookup count went up by one.
public struct Entry: Sendable, Equatable {
    public var nodeID: UInt64
    public var generation: UInt64
    public var attributes: FileStat
    public var entryTimeout: Timeout
    public var attributeTimeout: Timeout
    /// Sets FUSE_ATTR_SUBMOUNT: this directory is the root of another host mount.
    public var isSubmount: Bool

    public init(
        nodeID: UInt64, generation: UInt64 = 0, attributes: FileStat, entryTimeout: Timeout,
        attributeTimeout: Timeout, isSubmount: Bool = false
    ) {
        self.nodeID = nodeID
        self.generation = generation
        self.attributes = attributes
        self.entryTimeout = entryTimeout
        self.attributeTimeout = attributeTimeout
        self.isSubmount = isSubmount
    }

    /// The answer to a LOOKUP of a name that does not exist, which the guest may trust for `timeout`: node 0.
    /// The kernel keeps a negative dentry that long instead of asking again (a compiler's include path search,
    /// make's probes), and a name it creates itself replaces it at once.
    public static func negative(timeout: Timeout) -> Entry {
        Entry(nodeID: 0, attributes: FileStat(linkCount: 0, blockSize: 0), entryTimeout: timeout, attributeTimeout: .zero)
    }

    /// Whether this is a negative entry (node 0), which holds no node.
    public var isNegative: Bool { nodeID == 0 }
}

/// The answer to GETATTR.
public struct AttributeReply: Sendable, Equatable {
    public var attributes: FileStat
    public var timeout: Timeout
    public init(attributes: FileStat, timeout: Timeout) {
        self.attributes = attributes
        self.timeout = timeout
    }
}

/// What a file system holds for the guest, for the log lines at INIT and at the end of a session.
public struct FileSystemCensus: Sendable, Equatable, CustomStringConvertible {
    /// Nodes the guest holds, the root included.
    public var nodes: Int
    /// Open file and directory handles.
    public var handles: Int
    /// Bytes malloc has handed out and not had back, KiB.
    public var heapInUseKiB: Int
    /// The process's anonymous resident memory (RssAnon), KiB; nil where it cannot be read.
    public var anonymousResidentKiB: Int?

    public init(nodes: Int, handles: Int, heapInUseKiB: Int, anonymousResidentKiB: Int?) {
        self.nodes = nodes
        self.handles = handles
        self.heapInUseKiB = heapInUseKiB
        self.anonymousResidentKiB = anonymousResidentKiB
    }

    public var description: String {
        "\(nodes) nodes, \(handles) handles, heap in use \(heapInUseKiB) KiB"
            + (anonymousResidentKiB.map { ", anonymous RSS \($0) KiB" } ?? "")
    }
}

/// The answer to STATX: the attributes as GETATTR's, and what statx(2) tells beyond them.
public struct StatxReply: Sendable, Equatable {
    public var attributes: ExtendedFileStat
    public var timeout: Timeout
    public init(attributes: ExtendedFileStat, timeout: Timeout) {
        self.attributes = attributes
        self.timeout = timeout
    }
}

/// The answer to OPEN, OPENDIR and CREATE.
public struct OpenReply: Sendable, Equatable {
    public var handle: UInt64
    public var flags: FUSEOpenFlags
    public init(handle: UInt64, flags: FUSEOpenFlags = []) {
        self.handle = handle
        self.flags = flags
    }
}

/// What the guest's kernel offered in INIT.
public struct InitRequest: Sendable, Equatable {
    public var major: UInt32
    public var minor: UInt32
    public var maxReadahead: UInt32
    public var flags: FUSEInitFlags

    public init(major: UInt32, minor: UInt32, maxReadahead: UInt32, flags: FUSEInitFlags) {
        self.major = major
        self.minor = minor
        self.maxReadahead = maxReadahead
        self.flags = flags
    }
}

/// A file name from a request: the bytes up to (not including) the terminating NUL, which is still in memory
/// right after them, so `cString` can go straight to a system call. Valid only during the request.
// SAFETY: A view of the request's name in the session's scratch storage, valid during the request; file systems use it
// only within the call.
@safe
public struct FUSEName {
    public let bytes: UnsafeRawBufferPointer

    /// Wraps `bytes`, which must be followed in memory by a NUL byte.
    public init(bytes: UnsafeRawBufferPointer) { unsafe self.bytes = unsafe bytes }

    /// The name as a NUL-terminated C string.
    public var cString: UnsafePointer<CChar> { unsafe bytes.baseAddress!.assumingMemoryBound(to: CChar.self) }

    /// Whether the name may name an entry of a directory: not empty, no '/', not longer than NAME_MAX.
    public var isValidComponent: Bool {
        // SAFETY: reads the name's bytes, valid during the request.
        unsafe !bytes.isEmpty && bytes.count <= 255 && !bytes.contains(UInt8(ascii: "/"))
    }
    /// "."
    public var isDot: Bool { unsafe bytes.count == 1 && bytes[0] == UInt8(ascii: ".") }
    /// ".."
    public var isDotDot: Bool { unsafe bytes.count == 2 && bytes[0] == UInt8(ascii: ".") && bytes[1] == UInt8(ascii: ".") }

    public var string: String { unsafe String(decoding: bytes, as: UTF8.self) }
}

/// Where a READ puts its data: the guest's own buffers (zero-copy), as `iovec`s.
// SAFETY: A view of the guest's buffers, valid during the request; file systems use it only within the call.
@safe
public struct ReadDestination {
    /// The buffers, in order; their lengths add up to `length`.
    public let buffers: UnsafeBufferPointer<iovec>
    /// The bytes requested (never more than the buffers hold).
    public let length: Int

    public init(buffers: UnsafeBufferPointer<iovec>, length: Int) {
        // SAFETY: keeps the guest's buffers for the call they are passed to.
        unsafe self.buffers = unsafe buffers
        self.length = length
    }
}

/// Collects directory entries into a READDIR or READDIRPLUS reply.
public protocol DirectoryEntrySink {
    /// Whether an entry with a name of `nameLength` bytes still fits (READDIRPLUS asks before its lookup).
    func fits(nameLength: Int) -> Bool
    /// Adds an entry; false when it does not fit, and then nothing was added.
    /// - Parameters:
    ///   - entry: READDIRPLUS only: the looked-up node, or nil for "." and ".." (the guest does not instantiate them).
    ///   - offset: the cookie that continues the listing after this entry.
    mutating func add(name: UnsafeRawBufferPointer, inode: UInt64, type: UInt32, offset: UInt64, entry: Entry?) -> Bool
}

/// The operations a FUSE file system implements. Every method has a default that fails with ENOSYS.
///
/// Lookup counts: every successful `lookup`, and every entry of a `readdirplus` reply that carries a node,
/// adds one to that node's lookup count. `forget` subtracts what the guest says; a node whose count reaches
/// zero may be dropped. The root node (id 1) is never forgotten.
///
/// Handles: `open` and `opendir` return a handle that stays valid until `release`/`releasedir` with it.
/// Methods are called from several queue threads at once: implementations are thread-safe.
public protocol FileSystem: AnyObject, Sendable {
    /// INIT: the kernel's offer; returns the flags the file system wants on top of the server's own.
    func initialize(_ request: InitRequest) throws(Errno) -> FUSEInitFlags
    /// DESTROY, or the front-end went away: drop every node but the root and every handle.
    func destroy()
    /// What the file system holds now (nil if it does not say).
    var census: FileSystemCensus? { get }
    func lookup(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno) -> Entry
    func forget(_ context: RequestContext, node: UInt64, count: UInt64)
    func getattr(_ context: RequestContext, node: UInt64, handle: UInt64?) throws(Errno) -> AttributeReply
    /// STATX (7.39): GETATTR with the birth time. `syncFlags` are the caller's AT_STATX_* bits. ENOSYS makes
    /// the guest fall back to GETATTR for good.
    func statx(_ context: RequestContext, node: UInt64, handle: UInt64?, syncFlags: UInt32) throws(Errno) -> StatxReply
    /// Writes the symlink's target into `buffer`; returns its length.
    func readlink(_ context: RequestContext, node: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int
    func open(_ context: RequestContext, node: UInt64, flags: UInt32) throws(Errno) -> OpenReply
    /// Reads at most `destination.length` bytes at `offset` into the guest's buffers; returns the count read.
    func read(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, into destination: ReadDestination) throws(Errno) -> Int
    func flush(_ context: RequestContext, node: UInt64, handle: UInt64, lockOwner: UInt64) throws(Errno)
    /// - Parameter releaseFlags: FUSE_RELEASE_* (FLUSH, FLOCK_UNLOCK), not the file's open flags.
    func release(_ context: RequestContext, node: UInt64, handle: UInt64, releaseFlags: UInt32) throws(Errno)
    func statfs(_ context: RequestContext, node: UInt64) throws(Errno) -> FileSystemStats
    func opendir(_ context: RequestContext, node: UInt64, flags: UInt32) throws(Errno) -> OpenReply
    /// Lists from `offset`; entries go into `sink` until it is full or the directory ends.
    func readdir<Sink: DirectoryEntrySink>(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, plus: Bool, into sink: inout Sink) throws(Errno)
    func releasedir(_ context: RequestContext, node: UInt64, handle: UInt64) throws(Errno)
    func access(_ context: RequestContext, node: UInt64, mask: UInt32) throws(Errno)
    /// Writes the attribute's value into `buffer` (empty: only its size is wanted); returns its size.
    /// - Throws: `Errno.range` when `buffer` is not empty and too small.
    func getxattr(_ context: RequestContext, node: UInt64, name: FUSEName, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int
    /// Writes the NUL-separated attribute names into `buffer` (empty: only the size is wanted); returns the size.
    func listxattr(_ context: RequestContext, node: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int

    // Operations that change files. Creating operations (mknod, mkdir, symlink, link, create, tmpfile) add one
    // lookup to the node they return.
    func setattr(_ context: RequestContext, node: UInt64, changes: AttributeChanges) throws(Errno) -> AttributeReply
    func mknod(_ context: RequestContext, parent: UInt64, name: FUSEName, mode: UInt32, device: UInt32, umask: UInt32) throws(Errno) -> Entry
    func mkdir(_ context: RequestContext, parent: UInt64, name: FUSEName, mode: UInt32, umask: UInt32) throws(Errno) -> Entry
    func symlink(_ context: RequestContext, parent: UInt64, name: FUSEName, target: FUSEName) throws(Errno) -> Entry
    func link(_ context: RequestContext, node: UInt64, newParent: UInt64, newName: FUSEName) throws(Errno) -> Entry
    func unlink(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno)
    func rmdir(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno)
    /// RENAME and RENAME2; `flags` are renameat2's (NOREPLACE, EXCHANGE, WHITEOUT).
    func rename(_ context: RequestContext, parent: UInt64, name: FUSEName, newParent: UInt64, newName: FUSEName, flags: UInt32) throws(Errno)
    func create(_ context: RequestContext, parent: UInt64, name: FUSEName, flags: UInt32, mode: UInt32, umask: UInt32) throws(Errno) -> (Entry, OpenReply)
    func tmpfile(_ context: RequestContext, parent: UInt64, flags: UInt32, mode: UInt32, umask: UInt32) throws(Errno) -> (Entry, OpenReply)
    /// Writes the guest's buffers at `offset`; returns the count written. `fromPageCache`: the kernel writes back
    /// pages of its cache (FUSE_WRITE_CACHE), through any handle of the file open for writing.
    func write(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, from source: WriteSource, killSetIDBits: Bool, fromPageCache: Bool) throws(Errno) -> Int
    func fsync(_ context: RequestContext, node: UInt64, handle: UInt64, dataOnly: Bool, directory: Bool) throws(Errno)
    func fallocate(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, length: UInt64, mode: UInt32) throws(Errno)
    func lseek(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, whence: UInt32) throws(Errno) -> UInt64
    func copyFileRange(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, toNode: UInt64, toHandle: UInt64, toOffset: UInt64, length: UInt64, flags: UInt64) throws(Errno) -> Int
    func setxattr(_ context: RequestContext, node: UInt64, name: FUSEName, value: UnsafeRawBufferPointer, flags: UInt32, killSGID: Bool) throws(Errno)
    func removexattr(_ context: RequestContext, node: UInt64, name: FUSEName) throws(Errno)
    func syncfs(_ context: RequestContext, node: UInt64) throws(Errno)
    /// GETLK: the lock that would conflict with `lock` held by `owner`, or `lock` with type F_UNLCK if none.
    func getlk(_ context: RequestContext, node: UInt64, handle: UInt64, owner: UInt64, lock: FileLock) throws(Errno) -> FileLock
    /// SETLK, and SETLKW when `wait` is given; `flock` for BSD locks (FUSE_LK_FLOCK). SETLKW blocks its thread
    /// (one of its own, which the server starts) and runs its blocking call through `wait`, so that an
    /// INTERRUPT or a ring stop can end it with EINTR.
    func setlk(_ context: RequestContext, node: UInt64, handle: UInt64, owner: UInt64, lock: FileLock, flock: Bool, wait: CancellableWait?) throws(Errno)
}

extension FileSystem {
    public func initialize(_ request: InitRequest) throws(Errno) -> FUSEInitFlags { [] }
    public func destroy() {}
    public var census: FileSystemCensus? { nil }
    public func lookup(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno) -> Entry { throw .noFunction }
    public func forget(_ context: RequestContext, node: UInt64, count: UInt64) {}
    public func getattr(_ context: RequestContext, node: UInt64, handle: UInt64?) throws(Errno) -> AttributeReply { throw .noFunction }
    public func statx(_ context: RequestContext, node: UInt64, handle: UInt64?, syncFlags: UInt32) throws(Errno) -> StatxReply {
        throw .noFunction
    }
    public func readlink(_ context: RequestContext, node: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int { throw .noFunction }
    public func open(_ context: RequestContext, node: UInt64, flags: UInt32) throws(Errno) -> OpenReply { throw .noFunction }
    public func read(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, into destination: ReadDestination) throws(Errno) -> Int { throw .noFunction }
    public func flush(_ context: RequestContext, node: UInt64, handle: UInt64, lockOwner: UInt64) throws(Errno) { throw .noFunction }
    public func release(_ context: RequestContext, node: UInt64, handle: UInt64, releaseFlags: UInt32) throws(Errno) { throw .noFunction }
    public func statfs(_ context: RequestContext, node: UInt64) throws(Errno) -> FileSystemStats { throw .noFunction }
    public func opendir(_ context: RequestContext, node: UInt64, flags: UInt32) throws(Errno) -> OpenReply { throw .noFunction }
    public func readdir<Sink: DirectoryEntrySink>(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, plus: Bool, into sink: inout Sink) throws(Errno) { throw .noFunction }
    public func releasedir(_ context: RequestContext, node: UInt64, handle: UInt64) throws(Errno) { throw .noFunction }
    public func access(_ context: RequestContext, node: UInt64, mask: UInt32) throws(Errno) { throw .noFunction }
    public func getxattr(_ context: RequestContext, node: UInt64, name: FUSEName, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int { throw .noFunction }
    public func listxattr(_ context: RequestContext, node: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int { throw .noFunction }
}
