// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import Logging
import Synchronization
import FUSETestSupport
import Testing
import VFSSystem

/// A file system that answers from fixed data and records what it was asked.
final class FakeFileSystem: FileSystem {
    let forgets = Mutex<[(UInt64, UInt64)]>([])
    let lookedUp = Mutex<[String]>([])

    func lookup(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno) -> Entry {
        lookedUp.withLock { $0.append(name.string) }
        guard name.string == "present" else { throw .noEntry }
        return Entry(nodeID: 42, generation: 7, attributes: FileStat(inode: 1234, mode: 0o100644, size: 99, mountID: 3),
                     entryTimeout: Timeout(seconds: 5), attributeTimeout: Timeout(seconds: 6, nanoseconds: 500))
    }

    func forget(_ context: RequestContext, node: UInt64, count: UInt64) {
        forgets.withLock { $0.append((node, count)) }
    }

    let destroyed = Mutex(0)
    func destroy() { destroyed.withLock { $0 += 1 } }

    let released = Mutex<[UInt32]>([])
    func release(_ context: RequestContext, node: UInt64, handle: UInt64, releaseFlags: UInt32) throws(Errno) {
        released.withLock { $0.append(releaseFlags) }
    }

    func read(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, into destination: ReadDestination) throws(Errno) -> Int {
        // Fills the guest's buffers with (offset + i) & 0xff, up to 1000 bytes ("end of file").
        let count = min(destination.length, 1000)
        var i = 0
        for v in destination.buffers where i < count {
            let n = min(v.iov_len, count - i)
            for j in 0..<n { v.iov_base!.storeBytes(of: UInt8(truncatingIfNeeded: Int(offset) + i + j), toByteOffset: j, as: UInt8.self) }
            i += n
        }
        return count
    }

    func readdir<Sink: DirectoryEntrySink>(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, plus: Bool, into sink: inout Sink) throws(Errno) {
        let names = ["a", "bb", "a-much-longer-name"]
        for (i, name) in names.enumerated() where UInt64(i) >= offset {
            let added = Array(name.utf8).withUnsafeBytes {
                sink.add(name: $0, inode: UInt64(100 + i), type: 8, offset: UInt64(i + 1), entry: nil)
            }
            if !added { return }
        }
    }

    let written = Mutex<[UInt8]>([])

    func write(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, from source: WriteSource, killSetIDBits: Bool, fromPageCache: Bool) throws(Errno) -> Int {
        var data: [UInt8] = []
        for v in source.buffers { data += UnsafeRawBufferPointer(start: v.iov_base, count: v.iov_len) }
        written.withLock { $0 = data }
        return data.count
    }

    func getxattr(_ context: RequestContext, node: UInt64, name: FUSEName, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        let value = Array("value".utf8)
        if buffer.isEmpty { return value.count }
        guard buffer.count >= value.count else { throw .range }
        buffer.copyBytes(from: value)
        return value.count
    }
}

func makeSession() -> (FUSESession<FakeFileSystem>, FakeFileSystem) {
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    let fs = FakeFileSystem()
    return (FUSESession(server: FUSEServer(fileSystem: fs, logger: logger)), fs)
}

/// A session that has done INIT with a 6.12 guest (7.41).
func initializedSession() -> (FUSESession<FakeFileSystem>, FakeFileSystem) {
    let (session, fs) = makeSession()
    _ = Frame(request: initFrame(minor: 41, flags: 0xffff_ffff | (0xff << 32)), replySegments: [80]).run(session)
    return (session, fs)
}

@Suite("FUSE request decoding and replies")
struct FUSESessionTests {
    @Test("INIT agrees on min(guest, 41) and the flags both sides want", arguments: [(UInt32(37), UInt32(37)), (41, 41), (42, 41), (27, 27)])
    func initNegotiation(guest: UInt32, agreed: UInt32) throws {
        let (session, _) = makeSession()
        let offered: UInt64 = (1 << 0) | (1 << 1) | (1 << 13) | (1 << 22) | (1 << 30) | (1 << 36)
        let (written, reply) = Frame(request: initFrame(minor: guest, flags: offered), replySegments: [16, 64]).run(session)
        #expect(written == 80)
        #expect(outHeader(reply).error == 0 && outHeader(reply).unique == 9 && outHeader(reply).len == 80)
        let out = payload(reply, as: fuse_init_out.self)
        #expect(out.major == 7 && out.minor == agreed)
        // ASYNC_READ, DO_READDIRPLUS, MAX_PAGES, INIT_EXT and DIRECT_IO_ALLOW_MMAP are wanted; POSIX_LOCKS is not.
        #expect(out.flags == UInt32((1 << 0) | (1 << 13) | (1 << 22) | (1 << 30)))
        #expect(out.flags2 == 1 << 4)
        #expect(out.max_write == 1 << 20 && out.max_pages == 256 && out.max_readahead == 131072)
        #expect(session.server.isInitialized)
    }

    @Test("an INIT while a session is open (a guest that rebooted without DESTROY) first drops the old session")
    func initAgain() {
        let (session, fs) = initializedSession()
        #expect(fs.destroyed.withLock { $0 } == 0)
        let (_, reply) = Frame(request: initFrame(minor: 41, flags: 1 << 30), replySegments: [80]).run(session)
        #expect(outHeader(reply).error == 0 && session.server.isInitialized)
        #expect(fs.destroyed.withLock { $0 } == 1)
        // DESTROY ends it too, once.
        let (_, _) = Frame(request: frame(.destroy), replySegments: [16]).run(session)
        #expect(fs.destroyed.withLock { $0 } == 2 && !session.server.isInitialized)
    }

    @Test("INIT from a guest older than 7.27 is refused with EPROTO")
    func initTooOld() {
        let (session, _) = makeSession()
        let (_, reply) = Frame(request: initFrame(minor: 26, flags: 0), replySegments: [80]).run(session)
        #expect(outHeader(reply).error == -Errno.protocolError.rawValue)
        #expect(!session.server.isInitialized)
    }

    @Test("INIT with a newer major version is answered with ours only, so the kernel retries")
    func initNewerMajor() {
        let (session, _) = makeSession()
        let (_, reply) = Frame(request: initFrame(major: 8, minor: 0, flags: 0), replySegments: [80]).run(session)
        #expect(outHeader(reply).error == 0)
        let out = payload(reply, as: fuse_init_out.self)
        #expect(out.major == 7 && out.minor == 41)
        #expect(!session.server.isInitialized)
    }

    @Test("requests before INIT get EIO")
    func beforeInit() {
        let (session, fs) = makeSession()
        let (_, reply) = Frame(request: frame(.lookup, Array("present\0".utf8)), replySegments: [144]).run(session)
        #expect(outHeader(reply).error == -Errno.ioError.rawValue)
        #expect(fs.lookedUp.withLock { $0.isEmpty })
    }

    @Test("RELEASE hands the file system its release flags (FLOCK_UNLOCK), not the file's open flags")
    func releaseFlags() {
        let (session, fs) = initializedSession()
        let readWrite = fuse_release_in(fh: 1, flags: UInt32(2), release_flags: 0, lock_owner: 0)  // O_RDWR
        let unlock = fuse_release_in(fh: 2, flags: 0, release_flags: UInt32(FUSE_RELEASE_FLOCK_UNLOCK), lock_owner: 9)
        for input in [readWrite, unlock] {
            let (_, reply) = Frame(request: frame(.release, node: 42, bytes(input)), replySegments: [16]).run(session)
            #expect(outHeader(reply).error == 0)
        }
        #expect(fs.released.withLock { $0 } == [0, UInt32(FUSE_RELEASE_FLOCK_UNLOCK)])
    }

    @Test("LOOKUP decodes the name and encodes fuse_entry_out")
    func lookup() {
        let (session, fs) = initializedSession()
        let (written, reply) = Frame(request: frame(.lookup, Array("present\0".utf8)), replySegments: [16, 128]).run(session)
        #expect(written == 144)
        let entry = payload(reply, as: fuse_entry_out.self)
        #expect(entry.nodeid == 42 && entry.generation == 7)
        #expect(entry.entry_valid == 5 && entry.attr_valid == 6 && entry.attr_valid_nsec == 500)
        #expect(entry.attr.ino == 1234 && entry.attr.size == 99 && entry.attr.mode == 0o100644)
        #expect(fs.lookedUp.withLock { $0 } == ["present"])

        let (_, missing) = Frame(request: frame(.lookup, Array("absent\0".utf8)), replySegments: [144]).run(session)
        #expect(outHeader(missing).error == -Errno.noEntry.rawValue && outHeader(missing).len == 16)
    }

    @Test("a request split over several buffers, anywhere, reads as the same request", arguments: [
        [1], [40], [20, 25], [45], [40, 8, 1], [8, 8, 8, 8, 8, 8, 8], Array(repeating: 1, count: 60),
    ])
    func splitRequest(segments: [Int]) {
        let (session, fs) = initializedSession()
        let request = frame(.lookup, Array("present\0".utf8))
        let (_, whole) = Frame(request: request, replySegments: [144]).run(session)
        let (written, split) = Frame(request: request, replySegments: [144], requestSegments: segments).run(session)
        #expect(written == 144)
        #expect(split == whole)
        #expect(fs.lookedUp.withLock { $0 } == ["present", "present"])
    }

    @Test("a name without its NUL is EINVAL and reaches no file system")
    func unterminatedName() {
        let (session, fs) = initializedSession()
        let (_, reply) = Frame(request: frame(.lookup, Array("present".utf8)), replySegments: [144]).run(session)
        #expect(outHeader(reply).error == -Errno.invalidArgument.rawValue)
        #expect(fs.lookedUp.withLock { $0.isEmpty })
    }

    @Test("unknown and unserved opcodes (BMAP, IOCTL, POLL; STATX of a file system without it) answer ENOSYS", arguments: [UInt32(99), 37, 39, 40, 52, 0])
    func unknownOpcode(opcode: UInt32) {
        let (session, _) = initializedSession()
        var request = frame(.getattr, [UInt8](repeating: 0, count: 24))
        request.withUnsafeMutableBytes { $0.storeBytes(of: opcode, toByteOffset: 4, as: UInt32.self) }
        let (written, reply) = Frame(request: request, replySegments: [304]).run(session)
        #expect(written == 16)
        #expect(outHeader(reply).error == -Errno.noFunction.rawValue)
    }

    @Test("a frame shorter than its header is dropped without a reply")
    func shortFrame() {
        let (session, _) = initializedSession()
        let (written, _) = Frame(request: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], replySegments: [64]).run(session)
        #expect(written == 0)
    }

    @Test("a reply buffer too small for the out header gets nothing written")
    func noRoomForReply() {
        let (session, _) = initializedSession()
        let (written, _) = Frame(request: frame(.lookup, Array("present\0".utf8)), replySegments: [8]).run(session)
        #expect(written == 0)
    }

    @Test("FORGET and BATCH_FORGET reach the file system and have no reply; a short batch stops at its end")
    func forgets() {
        let (session, fs) = initializedSession()
        let (w1, _) = Frame(request: frame(.forget, node: 42, bytes(fuse_forget_in(nlookup: 3))), replySegments: []).run(session)
        #expect(w1 == 0)
        var batch = bytes(fuse_batch_forget_in(count: 100, dummy: 0))
        batch += bytes(fuse_forget_one(nodeid: 5, nlookup: 1)) + bytes(fuse_forget_one(nodeid: 6, nlookup: 2))
        let (w2, _) = Frame(request: frame(.batchForget, node: 0, batch), replySegments: []).run(session)
        #expect(w2 == 0)
        #expect(fs.forgets.withLock { $0.map { [$0.0, $0.1] } } == [[42, 3], [5, 1], [6, 2]])
    }

    @Test("READ writes the data straight into the guest's buffers after the header, across segments")
    func readZeroCopy() {
        let (session, _) = initializedSession()
        var input = fuse_read_in()
        input.fh = 1
        input.offset = 10
        input.size = 300
        // The header in its own 16-byte buffer, then three data buffers, as Linux lays out a READ.
        let (written, reply) = Frame(request: frame(.read, node: 42, bytes(input)), replySegments: [16, 100, 100, 4096]).run(session)
        #expect(written == 316)
        #expect(outHeader(reply).len == 316 && outHeader(reply).error == 0)
        #expect(Array(reply[16...]) == (0..<300).map { UInt8(truncatingIfNeeded: 10 + $0) })

        // The header may share a buffer with data, and a short read reports what was read.
        input.size = 4000
        let (w2, r2) = Frame(request: frame(.read, node: 42, bytes(input)), replySegments: [1024, 4096]).run(session)
        #expect(w2 == 16 + 1000 && outHeader(r2).len == 1016)
        #expect(r2[16] == 10 && r2[1015] == UInt8(truncatingIfNeeded: 10 + 999))
    }

    @Test("WRITE hands the data after its arguments to the file system, and refuses data shorter than its size")
    func write() {
        let (session, fs) = initializedSession()
        var input = fuse_write_in()
        input.fh = 3
        input.size = 1000
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let (written, reply) = Frame(request: frame(.write, node: 42, bytes(input) + data), replySegments: [16, 8]).run(session)
        #expect(written == 24 && outHeader(reply).error == 0)
        #expect(payload(reply, as: fuse_write_out.self).size == 1000)
        #expect(fs.written.withLock { $0 } == data)

        input.size = 2000  // claims more than the frame carries
        let (_, short) = Frame(request: frame(.write, node: 42, bytes(input) + data), replySegments: [24]).run(session)
        #expect(outHeader(short).error == -Errno.invalidArgument.rawValue)
        input.size = (1 << 20) + 1  // over max_write
        let (_, big) = Frame(request: frame(.write, node: 42, bytes(input)), replySegments: [24]).run(session)
        #expect(outHeader(big).error == -Errno.invalidArgument.rawValue)
    }

    @Test("READDIR encodes padded fuse_dirents and stops at the requested size")
    func readdir() {
        let (session, _) = initializedSession()
        var input = fuse_read_in()
        input.size = 4096
        let (written, reply) = Frame(request: frame(.readdir, bytes(input)), replySegments: [4096]).run(session)
        // 24-byte header + name, each padded to 8: "a" 32, "bb" 32, 18-byte name 48
        #expect(written == 16 + 32 + 32 + 48)
        let first = payload(reply, as: fuse_dirent.self)
        #expect(first.ino == 100 && first.off == 1 && first.namelen == 1 && first.type == 8)
        #expect(reply[16 + 24] == UInt8(ascii: "a"))
        #expect(reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16 + 64 + 16, as: UInt32.self) } == 18)

        input.size = 70  // room for two entries only
        let (w2, _) = Frame(request: frame(.readdir, bytes(input)), replySegments: [4096]).run(session)
        #expect(w2 == 16 + 64)
    }

    @Test("GETXATTR with size 0 asks for the size; a short buffer is ERANGE")
    func getxattr() {
        let (session, _) = initializedSession()
        let name = Array("user.x\0".utf8)
        let (_, sizeReply) = Frame(request: frame(.getxattr, bytes(fuse_getxattr_in(size: 0, padding: 0)) + name), replySegments: [64]).run(session)
        #expect(payload(sizeReply, as: fuse_getxattr_out.self).size == 5)
        let (w, value) = Frame(request: frame(.getxattr, bytes(fuse_getxattr_in(size: 64, padding: 0)) + name), replySegments: [128]).run(session)
        #expect(w == 21 && Array(value[16...]) == Array("value".utf8))
        let (_, short) = Frame(request: frame(.getxattr, bytes(fuse_getxattr_in(size: 2, padding: 0)) + name), replySegments: [128]).run(session)
        #expect(outHeader(short).error == -Errno.range.rawValue)
    }

    @Test("a request longer than the session takes is refused, not truncated")
    func oversizedRequest() {
        let (session, fs) = initializedSession()
        let name = [UInt8](repeating: UInt8(ascii: "x"), count: 100_000) + [0]
        let (_, reply) = Frame(request: frame(.lookup, name), replySegments: [144]).run(session)
        #expect(outHeader(reply).error == -Errno.invalidArgument.rawValue)
        #expect(fs.lookedUp.withLock { $0.isEmpty })
    }
}

/// Keeps every message logged through it, in `lines`.
struct CapturingLogHandler: LogHandler {
    final class Lines: Sendable {
        let lines = Mutex<[String]>([])
    }
    let sink: Lines
    var logLevel: Logger.Level = .debug
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        sink.lines.withLock { $0.append("\(event.message)") }
    }
}

@Suite("FUSE session request counts")
struct FUSESessionCountTests {
    @Test("a session that ends logs, at debug level, how many requests of each opcode it served")
    func countsLogged() {
        let sink = CapturingLogHandler.Lines()
        var logger = Logger(label: "test") { _ in CapturingLogHandler(sink: sink) }
        logger.logLevel = .debug
        do {
            let session = FUSESession(server: FUSEServer(fileSystem: FakeFileSystem(), logger: logger), label: "queue 7")
            _ = Frame(request: initFrame(minor: 41, flags: 0), replySegments: [80]).run(session)
            for _ in 0..<3 {
                _ = Frame(request: frame(.lookup, Array("absent\0".utf8)), replySegments: [144]).run(session)
            }
            _ = Frame(request: frame(.getattr, bytes(fuse_getattr_in())), replySegments: [120]).run(session)
            _ = Frame(request: frame(.forget, node: 42, bytes(fuse_forget_in(nlookup: 1))), replySegments: []).run(session)
            var unknown = frame(.lookup)
            unknown.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(4000), toByteOffset: 4, as: UInt32.self) }
            _ = Frame(request: unknown, replySegments: [16]).run(session)
        }
        let lines = sink.lines.withLock { $0 }
        #expect(lines.contains("queue 7 served 7 requests: lookup 3, unknown 1, forget 1, getattr 1, init 1"), "\(lines)")
    }

    @Test("a session that served nothing, or logs above debug level, logs no counts")
    func quietWhenNothingOrNotDebug() {
        let sink = CapturingLogHandler.Lines()
        var logger = Logger(label: "test") { _ in CapturingLogHandler(sink: sink) }
        logger.logLevel = .debug
        _ = FUSESession(server: FUSEServer(fileSystem: FakeFileSystem(), logger: logger), label: "idle")
        logger.logLevel = .info
        do {
            let session = FUSESession(server: FUSEServer(fileSystem: FakeFileSystem(), logger: logger), label: "busy")
            _ = Frame(request: initFrame(minor: 41, flags: 0), replySegments: [80]).run(session)
        }
        #expect(!sink.lines.withLock { $0 }.contains { $0.contains("served") })
    }
}
