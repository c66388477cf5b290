// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import VFSSystem

/// A timestamp to set: now, leave as is, or a given time (SETATTR's FATTR_*TIME and FATTR_*TIME_NOW).
public enum TimeChange: Sendable, Equatable {
    case now
    case omit
    case to(FileTime)
}

/// What SETATTR changes; nil fields stay as they are.
public struct AttributeChanges: Sendable, Equatable {
    /// The open handle to apply them through (FATTR_FH), if any.
    public var handle: UInt64?
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: UInt64?
    public var accessTime: TimeChange = .omit
    public var modificationTime: TimeChange = .omit
    /// FATTR_KILL_SUIDGID: clear set-user-id and set-group-id (HANDLE_KILLPRIV_V2).
    public var killSetIDBits = false

    public init(handle: UInt64? = nil, mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, size: UInt64? = nil,
                accessTime: TimeChange = .omit, modificationTime: TimeChange = .omit, killSetIDBits: Bool = false) {
        self.handle = handle
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.accessTime = accessTime
        self.modificationTime = modificationTime
        self.killSetIDBits = killSetIDBits
    }
}

/// Where a WRITE's data is: the guest's own buffers (zero-copy), as `iovec`s.
// SAFETY: A view of the guest's buffers, valid during the request; file systems use it only within the call.
@safe
public struct WriteSource {
    public let buffers: UnsafeBufferPointer<iovec>
    public let length: Int
    public init(buffers: UnsafeBufferPointer<iovec>, length: Int) {
        unsafe self.buffers = unsafe buffers
        self.length = length
    }
}

/// A byte-range lock, as FUSE describes it (`struct fuse_file_lock`): `end` is inclusive, `UInt64.max` is EOF.
public struct FileLock: Sendable, Equatable {
    public var start: UInt64
    public var end: UInt64
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    public var type: UInt32
    public var pid: UInt32
    public init(start: UInt64, end: UInt64, type: UInt32, pid: UInt32) {
        self.start = start
        self.end = end
        self.type = type
        self.pid = pid
    }
}

extension FileSystem {
    public func setattr(_ context: RequestContext, node: UInt64, changes: AttributeChanges) throws(Errno) -> AttributeReply { throw .noFunction }
    public func mknod(_ context: RequestContext, parent: UInt64, name: FUSEName, mode: UInt32, device: UInt32, umask: UInt32) throws(Errno) -> Entry { throw .noFunction }
    public func mkdir(_ context: RequestContext, parent: UInt64, name: FUSEName, mode: UInt32, umask: UInt32) throws(Errno) -> Entry { throw .noFunction }
    public func symlink(_ context: RequestContext, parent: UInt64, name: FUSEName, target: FUSEName) throws(Errno) -> Entry { throw .noFunction }
    public func link(_ context: RequestContext, node: UInt64, newParent: UInt64, newName: FUSEName) throws(Errno) -> Entry { throw .noFunction }
    public func unlink(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno) { throw .noFunction }
    public func rmdir(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno) { throw .noFunction }
    public func rename(_ context: RequestContext, parent: UInt64, name: FUSEName, newParent: UInt64, newName: FUSEName, flags: UInt32) throws(Errno) { throw .noFunction }
    public func create(_ context: RequestContext, parent: UInt64, name: FUSEName, flags: UInt32, mode: UInt32, umask: UInt32) throws(Errno) -> (Entry, OpenReply) { throw .noFunction }
    public func tmpfile(_ context: RequestContext, parent: UInt64, flags: UInt32, mode: UInt32, umask: UInt32) throws(Errno) -> (Entry, OpenReply) { throw .noFunction }
    public func write(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, from source: WriteSource, killSetIDBits: Bool, fromPageCache: Bool) throws(Errno) -> Int { throw .noFunction }
    public func fsync(_ context: RequestContext, node: UInt64, handle: UInt64, dataOnly: Bool, directory: Bool) throws(Errno) { throw .noFunction }
    public func fallocate(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, length: UInt64, mode: UInt32) throws(Errno) { throw .noFunction }
    public func lseek(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, whence: UInt32) throws(Errno) -> UInt64 { throw .noFunction }
    public func copyFileRange(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, toNode: UInt64, toHandle: UInt64, toOffset: UInt64, length: UInt64, flags: UInt64) throws(Errno) -> Int { throw .noFunction }
    public func setxattr(_ context: RequestContext, node: UInt64, name: FUSEName, value: UnsafeRawBufferPointer, flags: UInt32, killSGID: Bool) throws(Errno) { throw .noFunction }
    public func removexattr(_ context: RequestContext, node: UInt64, name: FUSEName) throws(Errno) { throw .noFunction }
    public func syncfs(_ context: RequestContext, node: UInt64) throws(Errno) { throw .noFunction }
    public func getlk(_ context: RequestContext, node: UInt64, handle: UInt64, owner: UInt64, lock: FileLock) throws(Errno) -> FileLock { throw .noFunction }
    public func setlk(_ context: RequestContext, node: UInt64, handle: UInt64, owner: UInt64, lock: FileLock, flock: Bool, wait: CancellableWait?) throws(Errno) { throw .noFunction }
}
