// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import FUSETestSupport
import Glibc
import Logging
import Passthrough
import Synchronization
import Testing
import VFSSystem

/// Collects the requests a session finishes later (deferred SETLKW).
final class Completions: Sendable {
    let done = Mutex<[UInt64: UInt32]>([:])
    func record(_ token: UInt64, _ length: UInt32) { done.withLock { $0[token] = length } }
    /// Waits (bounded) for `token` to finish.
    func wait(_ token: UInt64) -> UInt32? {
        for _ in 0..<500 {
            if let length = done.withLock({ $0[token] }) { return length }
            usleep(10_000)
        }
        return nil
    }
    func finished(_ token: UInt64) -> Bool { done.withLock { $0[token] != nil } }
}

/// A session over a passthrough of `tree`, after INIT.
func lockSession(_ tree: TemporaryTree, _ completions: Completions) throws -> FUSESession<PassthroughFileSystem> {
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    let fs = try PassthroughFileSystem(options: PassthroughOptions(sharedDirectory: tree.path), logger: logger)
    let session = FUSESession(server: FUSEServer(fileSystem: fs, logger: logger)) { completions.record($0, $1) }
    _ = Frame(request: initFrame(minor: 38, flags: 0xffff_ffff), replySegments: [80]).run(session)
    return session
}

func lockIn(handle: UInt64, owner: UInt64, type: CInt, start: UInt64 = 0, end: UInt64 = 99, flock: Bool = false) -> [UInt8] {
    var input = fuse_lk_in()
    input.fh = handle
    input.owner = owner
    input.lk = fuse_file_lock(start: start, end: end, type: UInt32(type), pid: 42)
    input.lk_flags = flock ? UInt32(FUSE_LK_FLOCK) : 0
    return bytes(input)
}

/// Runs a frame whose reply is only a header, and returns its error (0: success).
func status(_ session: FUSESession<PassthroughFileSystem>, _ request: [UInt8]) -> Int32 {
    outHeader(Frame(request: request, replySegments: [16, 128]).run(session).1).error
}

@Suite("Locks held on the host")
struct LockTests {
    /// Looks up and opens "file" in the session; returns its node and handle.
    func open(_ session: FUSESession<PassthroughFileSystem>) -> (UInt64, UInt64) {
        let (_, entry) = Frame(request: frame(.lookup, Array("file\0".utf8)), replySegments: [144]).run(session)
        let node = payload(entry, as: fuse_entry_out.self).nodeid
        let (_, opened) = Frame(request: frame(.open, node: node, bytes(fuse_open_in(flags: UInt32(O_RDWR), open_flags: 0))), replySegments: [32]).run(session)
        return (node, payload(opened, as: fuse_open_out.self).fh)
    }

    @Test("two lock owners exclude each other; one owner never conflicts with itself")
    func owners() throws {
        let tree = TemporaryTree()
        tree.write("file", "contents")
        let completions = Completions()
        let session = try lockSession(tree, completions)
        let (node, handle) = open(session)
        let (_, handle2) = open(session)
        #expect(status(session, frame(.setlk, node: node, lockIn(handle: handle, owner: 1, type: F_WRLCK))) == 0)
        #expect(status(session, frame(.setlk, node: node, lockIn(handle: handle2, owner: 1, type: F_WRLCK, start: 50, end: 60))) == 0)
        #expect(status(session, frame(.setlk, node: node, lockIn(handle: handle2, owner: 2, type: F_RDLCK, start: 10, end: 10))) == -EAGAIN)
        let (_, found) = Frame(request: frame(.getlk, node: node, lockIn(handle: handle2, owner: 2, type: F_RDLCK, start: 10, end: 10)), replySegments: [64]).run(session)
        let lock = payload(found, as: fuse_lk_out.self).lk
        #expect(lock.type == UInt32(F_WRLCK) && lock.start == 0 && lock.end == 99)
        // FLUSH from owner 1 (its close) releases its locks.
        var flush = fuse_flush_in()
        flush.fh = handle
        flush.lock_owner = 1
        #expect(status(session, frame(.flush, node: node, bytes(flush))) == 0)
        #expect(status(session, frame(.setlk, node: node, lockIn(handle: handle2, owner: 2, type: F_WRLCK))) == 0)
    }

    @Test("SETLKW is deferred, holds no queue, and finishes when the lock is released")
    func waitFinishesOnRelease() throws {
        let tree = TemporaryTree()
        tree.write("file", "contents")
        let completions = Completions()
        let session = try lockSession(tree, completions)
        let (node, handle) = open(session)
        #expect(status(session, frame(.setlk, node: node, lockIn(handle: handle, owner: 1, type: F_WRLCK))) == 0)
        let (written, reply) = Frame(request: frame(.setlkw, unique: 77, node: node, lockIn(handle: handle, owner: 2, type: F_WRLCK)), replySegments: [16]).start(session)
        #expect(written == nil)  // deferred: no reply yet
        // The session keeps serving while the lock waits.
        #expect(status(session, frame(.getattr, node: node, bytes(fuse_getattr_in()))) == 0)
        usleep(100_000)
        #expect(!completions.finished(77))
        #expect(status(session, frame(.setlk, node: node, lockIn(handle: handle, owner: 1, type: F_UNLCK))) == 0)
        #expect(completions.wait(77) == 16)
        #expect(outHeader(reply.bytes(16)).error == 0 && outHeader(reply.bytes(16)).unique == 77)
    }

    @Test("INTERRUPT ends a waiting SETLKW with EINTR")
    func interrupt() throws {
        let tree = TemporaryTree()
        tree.write("file", "contents")
        let completions = Completions()
        let session = try lockSession(tree, completions)
        let (node, handle) = open(session)
        #expect(status(session, frame(.setlk, node: node, lockIn(handle: handle, owner: 1, type: F_WRLCK))) == 0)
        let (_, reply) = Frame(request: frame(.setlkw, unique: 88, node: node, lockIn(handle: handle, owner: 2, type: F_WRLCK)), replySegments: [16]).start(session)
        usleep(100_000)
        #expect(!completions.finished(88))
        let (written, _) = Frame(request: frame(.interrupt, unique: 89, node: 0, bytes(fuse_interrupt_in(unique: 88))), replySegments: []).run(session)
        #expect(written == 0)
        #expect(completions.wait(88) == 16)
        #expect(outHeader(reply.bytes(16)).error == -EINTR)
    }

    @Test("flock on one handle excludes another, and an unlocked handle can take it")
    func flock() throws {
        let tree = TemporaryTree()
        tree.write("file", "contents")
        let session = try lockSession(tree, Completions())
        let (node, a) = open(session)
        let (_, b) = open(session)
        #expect(status(session, frame(.setlk, node: node, lockIn(handle: a, owner: 1, type: F_WRLCK, flock: true))) == 0)
        #expect(status(session, frame(.setlk, node: node, lockIn(handle: b, owner: 2, type: F_RDLCK, flock: true))) == -EAGAIN)
        #expect(status(session, frame(.setlk, node: node, lockIn(handle: a, owner: 1, type: F_UNLCK, flock: true))) == 0)
        #expect(status(session, frame(.setlk, node: node, lockIn(handle: b, owner: 2, type: F_RDLCK, flock: true))) == 0)
    }
}

@Suite("Lock descriptions have ceilings and go with their node")
struct LockCeilingTests {
    @Test("a lock type of any 32 bits is EINVAL, never a trap")
    func anyLockType() throws {
        let tree = TemporaryTree()
        tree.write("file", "data")
        let completions = Completions()
        let session = try lockSession(tree, completions)
        let (_, entry) = Frame(request: frame(.lookup, Array("file\0".utf8)), replySegments: [144]).run(session)
        let node = payload(entry, as: fuse_entry_out.self).nodeid
        let (_, opened) = Frame(request: frame(.open, node: node, bytes(fuse_open_in(flags: UInt32(O_RDWR), open_flags: 0))), replySegments: [32]).run(session)
        let handle = payload(opened, as: fuse_open_out.self).fh
        for type in [UInt32(0x8000_0000), 0xffff_ffff, 3, 0x1_0001] {
            for flock in [false, true] {
                var input = fuse_lk_in()
                input.fh = handle
                input.owner = 1
                input.lk = fuse_file_lock(start: 0, end: 9, type: type, pid: 1)
                input.lk_flags = flock ? UInt32(FUSE_LK_FLOCK) : 0
                #expect(status(session, frame(.setlk, node: node, bytes(input))) == -EINVAL, "type \(type), flock \(flock)")
            }
        }
    }
}
