// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import FUSETestSupport
import Glibc
import Logging
import Synchronization
import Testing
import VFSSystem

/// A file system whose SETLKW waits until cancelled, and whose xattr calls say what they were given.
final class WaitingFileSystem: FileSystem {
    let waiting = Atomic<Int>(0)
    let lookups = Atomic<Int>(0)

    func lookup(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno) -> Entry {
        lookups.add(1, ordering: .relaxed)
        return Entry(nodeID: 2, attributes: FileStat(inode: 1, mode: 0o100644, size: 0, mountID: 0), entryTimeout: .zero, attributeTimeout: .zero)
    }

    func setlk(_ context: RequestContext, node: UInt64, handle: UInt64, owner: UInt64, lock: FileLock, flock: Bool, wait: CancellableWait?) throws(Errno) {
        guard let wait else { return }
        waiting.add(1, ordering: .relaxed)
        defer { waiting.subtract(1, ordering: .relaxed) }
        try wait.run { () throws(Errno) in
            var forever = timespec(tv_sec: 3600, tv_nsec: 0)
            if nanosleep(&forever, nil) != 0 { throw Errno.current }
        }
    }

    /// 15 bytes of names; an empty buffer asks for the size only.
    func listxattr(_ context: RequestContext, node: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        let names = Array("user.a\0user.bb\0".utf8)
        if buffer.isEmpty { return names.count }
        guard buffer.count >= names.count else { throw .range }
        buffer.copyBytes(from: names)
        return names.count
    }
}

/// Collects the requests a session finishes later.
final class Finished: Sendable {
    let done = Mutex<[UInt64: UInt32]>([:])
    func record(_ token: UInt64, _ length: UInt32) { done.withLock { $0[token] = length } }
    func wait(_ token: UInt64, seconds: Double = 5) -> UInt32? {
        for _ in 0..<Int(seconds * 100) {
            if let length = done.withLock({ $0[token] }) { return length }
            usleep(10_000)
        }
        return nil
    }
}

@Suite("FUSE input that contradicts itself, and deferred requests")
struct FUSEInputTests {
    func session(deferred: DeferredWork = DeferredWork(), finished: Finished = Finished()) -> (FUSESession<WaitingFileSystem>, WaitingFileSystem) {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let fs = WaitingFileSystem()
        let session = FUSESession(server: FUSEServer(fileSystem: fs, logger: logger), deferred: deferred) { finished.record($0, $1) }
        _ = Frame(request: initFrame(minor: 38, flags: 0xffff_ffff), replySegments: [80]).run(session)
        return (session, fs)
    }

    /// A LOOKUP frame whose header lengths are replaced.
    func lookup(len: UInt32? = nil, extensionUnits: UInt16 = 0) -> [UInt8] {
        var request = frame(.lookup, name("x"))
        request.withUnsafeMutableBytes { raw in
            if let len { raw.storeBytes(of: len, toByteOffset: 0, as: UInt32.self) }
            raw.storeBytes(of: extensionUnits, toByteOffset: 36, as: UInt16.self)
        }
        return request
    }

    @Test("a header len shorter than the header, longer than the request, or extensions longer than the arguments: EINVAL",
          arguments: [(UInt32(0), UInt16(0)), (16, 1), (39, 0), (43, 0), (1000, 0), (42, 1), (42, 0xffff)])
    func contradictoryLengths(len: UInt32, units: UInt16) {
        let (session, fs) = session()
        let (written, reply) = Frame(request: lookup(len: len, extensionUnits: units), replySegments: [256]).run(session)
        #expect(written == 16)
        #expect(outHeader(reply).error == -EINVAL)
        #expect(fs.lookups.load(ordering: .relaxed) == 0)
    }

    @Test("a reply buffer too small for a fixed-size success is EINVAL, and the file system is not called")
    func replyTooSmall() {
        let (session, fs) = session()
        let (written, reply) = Frame(request: frame(.lookup, name("x")), replySegments: [16, 100]).run(session)
        #expect(written == 16)
        #expect(outHeader(reply).error == -EINVAL)
        #expect(fs.lookups.load(ordering: .relaxed) == 0)
    }

    @Test("LISTXATTR into less room than the names need is ERANGE, with a header that says what was written",
          arguments: [[16], [16, 4], [20], [16, 15]])
    func xattrRoom(segments: [Int]) {
        let (session, _) = session()
        var input = fuse_getxattr_in()
        input.size = 100
        let (written, reply) = Frame(request: frame(.listxattr, bytes(input)), replySegments: segments).run(session)
        #expect(outHeader(reply).len == written)
        if segments.reduce(0, +) >= 31 {
            #expect(written == 31 && outHeader(reply).error == 0)
        } else {
            #expect(written == 16 && outHeader(reply).error == -ERANGE)
        }
    }

    @Test("WRITE whose size is more than its data, or than its header's len, is EINVAL")
    func writeSizes() {
        let (session, _) = session()
        var input = fuse_write_in()
        input.size = 10
        let data = [UInt8](repeating: 7, count: 10)
        let short = frame(.write, bytes(input) + data.prefix(5))
        #expect(outHeader(Frame(request: short, replySegments: [64]).run(session).1).error == -EINVAL)
        var lying = frame(.write, bytes(input) + data)
        lying.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(85), toByteOffset: 0, as: UInt32.self) }
        #expect(outHeader(Frame(request: lying, replySegments: [64]).run(session).1).error == -EINVAL)
    }

    func setlkw(unique: UInt64, owner: UInt64 = 1) -> [UInt8] {
        var input = fuse_lk_in()
        input.owner = owner
        input.lk = fuse_file_lock(start: 0, end: 10, type: UInt32(F_WRLCK), pid: 1)
        return frame(.setlkw, unique: unique, bytes(input))
    }

    @Test("a ring stop ends its lock waits with EINTR; a wait that starts afterwards ends at once")
    func cancelAll() {
        let deferred = DeferredWork()
        let finished = Finished()
        let (session, fs) = session(deferred: deferred, finished: finished)
        let (first, memory) = Frame(request: setlkw(unique: 51), replySegments: [16]).start(session)
        #expect(first == nil)
        for _ in 0..<100 where fs.waiting.load(ordering: .relaxed) == 0 { usleep(10_000) }
        #expect(deferred.count == 1)
        deferred.cancelAll()
        #expect(finished.wait(51) == 16)
        #expect(outHeader(memory.bytes(16)).error == -EINTR)
        let (second, later) = Frame(request: setlkw(unique: 52), replySegments: [16]).start(session)
        #expect(second == 16 && outHeader(later.bytes(16)).error == -EINTR)
        #expect(deferred.count == 0)
    }

    @Test("INTERRUPT ends the lock waits of its request id and no other")
    func interrupt() {
        let deferred = DeferredWork()
        let finished = Finished()
        let (session, fs) = session(deferred: deferred, finished: finished)
        let (_, a) = Frame(request: setlkw(unique: 61), replySegments: [16]).start(session)
        let (_, b) = Frame(request: setlkw(unique: 62), replySegments: [16]).start(session)
        for _ in 0..<100 where fs.waiting.load(ordering: .relaxed) < 2 { usleep(10_000) }
        _ = Frame(request: frame(.interrupt, unique: 99, bytes(fuse_interrupt_in(unique: 61))), replySegments: []).run(session)
        #expect(finished.wait(61) == 16)
        #expect(outHeader(a.bytes(16)).error == -EINTR)
        #expect(finished.wait(62, seconds: 0.2) == nil)
        deferred.cancelAll()
        #expect(finished.wait(62) == 16)
        _ = b
    }

    @Test("past the ceiling of lock waits, SETLKW answers ENOLCK at once")
    func lockWaitCeiling() {
        let deferred = DeferredWork()
        let finished = Finished()
        let (session, fs) = session(deferred: deferred, finished: finished)
        var memories: [ReplyMemory] = []
        for i in 0..<FUSELimits.lockWaits {
            let (written, memory) = Frame(request: setlkw(unique: 1000 + UInt64(i), owner: UInt64(i)), replySegments: [16]).start(session)
            #expect(written == nil)
            memories.append(memory)
        }
        let (written, refused) = Frame(request: setlkw(unique: 5000), replySegments: [16]).start(session)
        #expect(written == 16 && outHeader(refused.bytes(16)).error == -ENOLCK)
        for _ in 0..<300 where fs.waiting.load(ordering: .relaxed) < FUSELimits.lockWaits { usleep(10_000) }
        deferred.cancelAll()
        for i in 0..<FUSELimits.lockWaits { #expect(finished.wait(1000 + UInt64(i)) == 16) }
        // The waits are over: new ones are counted from zero again (a new queue, after the stop).
        let fresh = DeferredWork()
        let (session2, _) = (FUSESession(server: session.server, deferred: fresh) { finished.record($0, $1) }, ())
        let (again, _) = Frame(request: setlkw(unique: 6000), replySegments: [16]).start(session2)
        #expect(again == nil)
        fresh.cancelAll()
        #expect(finished.wait(6000) == 16)
    }
}
