// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import Glibc
import Synchronization
import VFSSystem

/// Host-side locks for the guest's POSIX record locks.
///
/// A POSIX lock belongs to a lock owner (a guest process), not to an open file. Each (node, owner) pair gets
/// its own host open file description, on which open-file-description locks (F_OFD_*) stand in for the
/// owner's: two guest owners exclude each other, one owner never conflicts with itself, and host processes
/// using fcntl or OFD locks see them. FLUSH (the guest's close) drops the owner's description, releasing its
/// locks as close() does; forgetting the node drops every description of it.
///
/// Each description is a host descriptor that a guest could otherwise multiply without end: at most
/// `LockLimits.ownersPerNode` per node and `LockLimits.owners` in all.
final class LockTable: Sendable {
    final class LockFile: Sendable {
        let fd: OwnedFD
        /// The guest handle every lock request of this owner came through, nil once they came through several.
        /// An open-file-description lock's owner is one guest file: its locks end at that file's RELEASE,
        /// which does not name the owner (see `releaseHandle`).
        let through = Mutex<(handle: UInt64, several: Bool)?>(nil)
        init(fd: consuming OwnedFD) { self.fd = fd }

        /// Records that a lock request came through `handle`.
        func note(handle: UInt64) {
            through.withLock { through in
                if let seen = through {
                    if seen.handle != handle { through = (seen.handle, true) }
                } else {
                    through = (handle, false)
                }
            }
        }

        /// Runs `body` with the description; the object, and so its descriptor, stays alive until body returns
        /// (a FLUSH dropping this owner meanwhile cannot close the descriptor under the call).
        func withDescriptor<T, E: Error>(_ body: (FileDescriptor) throws(E) -> T) throws(E) -> T { try body(fd.borrowed) }
    }

    private struct State {
        /// node -> owner -> description
        var files: [UInt64: [UInt64: LockFile]] = [:]
        var count = 0
    }

    private let state = Mutex(State())
    let perNodeLimit: Int
    let totalLimit: Int
    /// One log line the first time a ceiling refuses a lock.
    let ceilingReported = OneTimeFlag()

    init(perNodeLimit: Int = LockLimits.ownersPerNode, totalLimit: Int = LockLimits.owners) {
        self.perNodeLimit = perNodeLimit
        self.totalLimit = totalLimit
    }

    static func installWakeSignal() { ThreadWakeup.install() }

    /// What `file` found when a ceiling stopped it.
    enum Refusal: Error { case ceiling(perNode: Bool) }

    /// The owner's description of the node's file, opened on first use.
    /// - Throws: ENOLCK at a ceiling (after logging once through `report`), or what `open` throws.
    func file(node: UInt64, owner: UInt64, open: () throws(Errno) -> OwnedFD, report: (String) -> Void) throws(Errno) -> LockFile {
        if let existing = existingFile(node: node, owner: owner) { return existing }
        let made = LockFile(fd: try open())
        let outcome = state.withLock { state -> Result<LockFile, Refusal> in
            if let raced = state.files[node]?[owner] { return .success(raced) }
            let perNode = state.files[node]?.count ?? 0
            guard perNode < perNodeLimit else { return .failure(.ceiling(perNode: true)) }
            guard state.count < totalLimit else { return .failure(.ceiling(perNode: false)) }
            state.files[node, default: [:]][owner] = made
            state.count += 1
            return .success(made)
        }
        switch outcome {
        case .success(let file): return file
        case .failure(.ceiling(let perNode)):
            if ceilingReported.first() {
                report(perNode
                    ? "lock owners of one file reached their ceiling of \(perNodeLimit): further owners' locks answer ENOLCK"
                    : "lock owners reached their ceiling of \(totalLimit): further owners' locks answer ENOLCK")
            }
            throw .noLocksAvailable
        }
    }

    /// The owner's description if it has one (for unlocking and GETLK, which must not leave one behind).
    func existingFile(node: UInt64, owner: UInt64) -> LockFile? {
        state.withLock { $0.files[node]?[owner] }
    }

    /// Drops the owner's description of the node, releasing every lock it holds there.
    func releaseOwner(node: UInt64, owner: UInt64) {
        let dropped = state.withLock { state -> LockFile? in
            guard let file = state.files[node]?.removeValue(forKey: owner) else { return nil }
            if state.files[node]?.isEmpty == true { state.files[node] = nil }
            state.count -= 1
            return file
        }
        _ = dropped  // closed here, outside the lock
    }

    /// Drops the descriptions of a node whose every lock request came through `handle`, which the guest has
    /// released. The guest kernel takes a lock through F_OFD_SETLK with the file as owner and never unlocks it
    /// at the last close: RELEASE, which does not name the owner, is all the daemon hears. A POSIX owner that
    /// locked through that handle has closed it, and so been flushed, before its RELEASE can come.
    func releaseHandle(node: UInt64, handle: UInt64) {
        let dropped = state.withLock { state -> [LockFile] in
            guard let files = state.files[node] else { return [] }
            var dropped: [LockFile] = []
            for (owner, file) in files {
                guard let through = file.through.withLock({ $0 }), through.handle == handle, !through.several else { continue }
                state.files[node]?.removeValue(forKey: owner)
                dropped.append(file)
            }
            if state.files[node]?.isEmpty == true { state.files[node] = nil }
            state.count -= dropped.count
            return dropped
        }
        _ = dropped  // closed here, outside the lock
    }

    /// Drops every description of a node the guest forgot (its owners have all closed it by then).
    func releaseNode(_ node: UInt64) {
        let dropped = state.withLock { state -> [UInt64: LockFile]? in
            guard let files = state.files.removeValue(forKey: node) else { return nil }
            state.count -= files.count
            return files
        }
        _ = dropped
    }

    func clear() {
        let dropped = state.withLock { state -> [UInt64: [UInt64: LockFile]] in
            defer {
                state.files.removeAll()
                state.count = 0
            }
            return state.files
        }
        _ = dropped
    }

    /// Descriptions held now (tests).
    var count: Int { state.withLock { $0.count } }
}

/// FUSE's "to the end of the file" (OFFSET_MAX).
let lockToEnd = UInt64(Int64.max)

extension PassthroughFileSystem {
    func recordLock(_ lock: FileLock) throws(Errno) -> FileDescriptor.RecordLock {
        guard lock.start <= lockToEnd, lock.end >= lock.start || lock.end == lockToEnd else { throw .invalidArgument }
        // F_RDLCK, F_WRLCK or F_UNLCK exactly: other bits are not cut away into one of them.
        guard lock.type == UInt32(F_RDLCK) || lock.type == UInt32(F_WRLCK) || lock.type == UInt32(F_UNLCK) else {
            throw .invalidArgument
        }
        let length: Int64 = lock.end >= lockToEnd ? 0 : Int64(lock.end - lock.start + 1)
        return FileDescriptor.RecordLock(type: CShort(truncatingIfNeeded: lock.type), start: Int64(lock.start), length: length)
    }

    /// Opens the node's file for locking, read-write if the host allows, else as its access permits. Only
    /// regular files: anything else is never opened for the guest.
    func openForLocking(_ data: InodeData) throws(Errno) -> OwnedFD {
        guard data.fileType == .regular else { throw .badFileDescriptor }
        do throws(Errno) {
            return try reopen(data, flags: O_RDWR | CVFS_O_CLOEXEC)
        } catch {
            guard error == .permissionDenied || error == .readOnlyFileSystem else { throw error }
            return try reopen(data, flags: O_RDONLY | CVFS_O_CLOEXEC)
        }
    }

    /// The owner's description of the node, opened on first use (within the ceilings).
    func lockFile(node: UInt64, owner: UInt64) throws(Errno) -> LockTable.LockFile {
        let data = try self.node(node)
        return try lockTable.file(node: node, owner: owner, open: { () throws(Errno) -> OwnedFD in try openForLocking(data) },
                                  report: { logger.warning("\($0)") })
    }

    public func getlk(_ context: RequestContext, node: UInt64, handle: UInt64, owner: UInt64, lock: FileLock) throws(Errno) -> FileLock {
        guard options.locks else { throw .noFunction }
        let request = try recordLock(lock)
        // An owner without a description holds no lock here: a description opened for this question only
        // (and closed after it) sees every conflicting lock, and leaves nothing behind.
        let found: FileDescriptor.RecordLock
        if let file = lockTable.existingFile(node: node, owner: owner) {
            found = try file.withDescriptor { (fd) throws(Errno) in try fd.conflictingLock(request) }
        } else {
            let fd = try openForLocking(try self.node(node))
            found = try fd.borrowed.conflictingLock(request)
        }
        guard found.type != CShort(F_UNLCK) else {
            return FileLock(start: lock.start, end: lock.end, type: UInt32(F_UNLCK), pid: 0)
        }
        let end = found.length == 0 ? lockToEnd : UInt64(found.start + found.length - 1)
        // An OFD lock has no process; a host process's POSIX lock reports its pid.
        return FileLock(start: UInt64(found.start), end: end, type: UInt32(found.type), pid: found.pid > 0 ? UInt32(found.pid) : 0)
    }

    public func setlk(_ context: RequestContext, node: UInt64, handle: UInt64, owner: UInt64, lock: FileLock, flock: Bool, wait: CancellableWait?) throws(Errno) {
        guard flock ? options.flockLocks : options.locks else { throw .noFunction }
        if flock {
            // A directory the guest did not open (CachePolicy.opensDirectories) has no open file description
            // whose release would end the lock: refuse rather than hold a lock nobody can release.
            if handle == 0 && !options.cache.opensDirectories { throw .noLocksAvailable }
            let open = try self.handle(handle)
            let operation: CInt
            // The type is the guest's 32 bits: compared as they are, never converted (which could trap).
            switch lock.type {
            case UInt32(F_RDLCK): operation = LOCK_SH
            case UInt32(F_WRLCK): operation = LOCK_EX
            case UInt32(F_UNLCK): operation = LOCK_UN
            default: throw .invalidArgument
            }
            if let wait {
                try wait.run { () throws(Errno) in try open.withDescriptor { (fd) throws(Errno) in try fd.flock(operation) } }
            } else {
                try open.withDescriptor { (fd) throws(Errno) in try fd.flock(operation | LOCK_NB) }
            }
            return
        }
        let request = try recordLock(lock)
        if request.type == CShort(F_UNLCK) {
            // Nothing to unlock for an owner that never locked here; do not open a description for it.
            guard let file = lockTable.existingFile(node: node, owner: owner) else { return }
            try file.withDescriptor { (fd) throws(Errno) in try fd.setLock(request, wait: false) }
            return
        }
        let file = try lockFile(node: node, owner: owner)
        file.note(handle: handle)
        do throws(Errno) {
            if let wait {
                try wait.run { () throws(Errno) in try file.withDescriptor { (fd) throws(Errno) in try fd.setLock(request, wait: true) } }
            } else {
                try file.withDescriptor { (fd) throws(Errno) in try fd.setLock(request, wait: false) }
            }
        } catch {
            // fcntl reports a conflict as EACCES or EAGAIN; the guest's fcntl expects EAGAIN.
            throw error == .permissionDenied ? .wouldBlock : error
        }
    }
}

/// Ceilings on the host descriptors that stand for the guest's POSIX lock owners (see `LockTable`).
public enum LockLimits {
    /// Lock owners with a description of one node. Past it, SETLK and SETLKW of a new owner answer ENOLCK.
    public static let ownersPerNode = 1024
    /// Lock owners' descriptions over all nodes.
    public static let owners = 4096
}
