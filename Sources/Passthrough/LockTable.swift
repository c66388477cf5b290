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
/// locks as close() does.
final class LockTable: Sendable {
    struct Key: Hashable {
        var node: UInt64
        var owner: UInt64
    }

    final class LockFile: Sendable {
        let fd: OwnedFD
        init(fd: consuming OwnedFD) { self.fd = fd }
    }

    /// A SETLKW that waits on a thread of its own.
    struct Waiter {
        let thread: pthread_t
        var cancelled: Bool
    }

    private let files = Mutex<[Key: LockFile]>([:])
    private let waiters = Mutex<[UInt64: Waiter]>([:])

    static func installWakeSignal() { ThreadWakeup.install() }

    /// The owner's description of the node's file, opened on first use.
    func file(node: UInt64, owner: UInt64, open: () throws(Errno) -> OwnedFD) throws(Errno) -> LockFile {
        let key = Key(node: node, owner: owner)
        if let existing = files.withLock({ $0[key] }) { return existing }
        let made = LockFile(fd: try open())
        return files.withLock { files in
            if let raced = files[key] { return raced }
            files[key] = made
            return made
        }
    }

    /// The owner's description if it has one (for unlocking, which must not open anything).
    func existingFile(node: UInt64, owner: UInt64) -> LockFile? {
        files.withLock { $0[Key(node: node, owner: owner)] }
    }

    /// Drops the owner's description of the node, releasing every lock it holds there.
    func releaseOwner(node: UInt64, owner: UInt64) {
        _ = files.withLock { $0.removeValue(forKey: Key(node: node, owner: owner)) }
    }

    func clear() {
        files.withLock { $0.removeAll() }
    }

    /// Runs a blocking wait for request `unique`, which `interrupt(unique)` can cancel with EINTR.
    func wait(unique: UInt64, _ body: () throws(Errno) -> Void) throws(Errno) {
        ThreadWakeup.allowOnCurrentThread()
        waiters.withLock { $0[unique] = Waiter(thread: ThreadWakeup.current, cancelled: false) }
        defer { _ = waiters.withLock { $0.removeValue(forKey: unique) } }
        while true {
            if waiters.withLock({ $0[unique]?.cancelled ?? false }) { throw .interrupted }
            do throws(Errno) {
                try body()
                return
            } catch {
                // A wake-up meant for another wait, or a stray signal: wait again unless cancelled.
                if error != .interrupted { throw error }
            }
        }
    }

    /// INTERRUPT: cancels the wait of request `unique`, if one is running.
    func interrupt(_ unique: UInt64) {
        // The waiter may be between its check and the system call: signal until it has left.
        for _ in 0..<200 {
            let thread: pthread_t? = waiters.withLock { waiters in
                guard var waiter = waiters[unique] else { return nil }
                waiter.cancelled = true
                waiters[unique] = waiter
                return waiter.thread
            }
            guard let thread else { return }
            ThreadWakeup.wake(thread)
            usleep(1000)
        }
    }
}

/// FUSE's "to the end of the file" (OFFSET_MAX).
let lockToEnd = UInt64(Int64.max)

extension PassthroughFileSystem {
    func recordLock(_ lock: FileLock) throws(Errno) -> FileDescriptor.RecordLock {
        guard lock.start <= lockToEnd, lock.end >= lock.start || lock.end == lockToEnd else { throw .invalidArgument }
        let length: Int64 = lock.end >= lockToEnd ? 0 : Int64(lock.end - lock.start + 1)
        return FileDescriptor.RecordLock(type: CShort(truncatingIfNeeded: lock.type), start: Int64(lock.start), length: length)
    }

    /// Opens the node for locking, read-write if the host allows, else as its access permits.
    func lockFile(node: UInt64, owner: UInt64) throws(Errno) -> LockTable.LockFile {
        let data = try self.node(node)
        guard data.fileType == .regular else { throw .invalidArgument }
        return try lockTable.file(node: node, owner: owner) { () throws(Errno) -> OwnedFD in
            do throws(Errno) {
                return try reopen(data, flags: O_RDWR | CVFS_O_CLOEXEC)
            } catch {
                guard error == .permissionDenied || error == .readOnlyFileSystem else { throw error }
                return try reopen(data, flags: O_RDONLY | CVFS_O_CLOEXEC)
            }
        }
    }

    public func getlk(_ context: RequestContext, node: UInt64, handle: UInt64, owner: UInt64, lock: FileLock) throws(Errno) -> FileLock {
        guard options.locks else { throw .noFunction }
        let file = try lockFile(node: node, owner: owner)
        let found = try file.fd.borrowed.conflictingLock(try recordLock(lock))
        guard found.type != CShort(F_UNLCK) else {
            return FileLock(start: lock.start, end: lock.end, type: UInt32(F_UNLCK), pid: 0)
        }
        let end = found.length == 0 ? lockToEnd : UInt64(found.start + found.length - 1)
        // An OFD lock has no process; a host process's POSIX lock reports its pid.
        return FileLock(start: UInt64(found.start), end: end, type: UInt32(found.type), pid: found.pid > 0 ? UInt32(found.pid) : 0)
    }

    public func setlk(_ context: RequestContext, node: UInt64, handle: UInt64, owner: UInt64, lock: FileLock, flock: Bool, wait: Bool) throws(Errno) {
        guard options.locks else { throw .noFunction }
        if flock {
            // A directory the guest did not open (CachePolicy.opensDirectories) has no open file description
            // whose release would end the lock: refuse rather than hold a lock nobody can release.
            if handle == 0 && !options.cache.opensDirectories { throw .noLocksAvailable }
            let open = try self.handle(handle)
            let operation: CInt
            switch CInt(lock.type) {
            case F_RDLCK: operation = LOCK_SH
            case F_WRLCK: operation = LOCK_EX
            case F_UNLCK: operation = LOCK_UN
            default: throw .invalidArgument
            }
            let run = { () throws(Errno) in try open.fd.borrowed.flock(operation | (wait ? 0 : LOCK_NB)) }
            if wait { try lockTable.wait(unique: context.unique, run) } else { try run() }
            return
        }
        let request = try recordLock(lock)
        if request.type == CShort(F_UNLCK) {
            // Nothing to unlock for an owner that never locked here; do not open a description for it.
            guard let file = lockTable.existingFile(node: node, owner: owner) else { return }
            try file.fd.borrowed.setLock(request, wait: false)
            return
        }
        let file = try lockFile(node: node, owner: owner)
        do throws(Errno) {
            if wait {
                try lockTable.wait(unique: context.unique) { () throws(Errno) in try file.fd.borrowed.setLock(request, wait: true) }
            } else {
                try file.fd.borrowed.setLock(request, wait: false)
            }
        } catch {
            // fcntl reports a conflict as EACCES or EAGAIN; the guest's fcntl expects EAGAIN.
            throw error == .permissionDenied ? .wouldBlock : error
        }
    }

    public func interrupt(_ unique: UInt64) {
        lockTable.interrupt(unique)
    }
}
