// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import Glibc
import Logging
import Passthrough
import Synchronization
import VFSSystem

/// A file system that answers every request with plausible data, so that each opcode's decoding and reply
/// encoding is reached (crosvm fuzzes its server over a `NullFs` of ENOSYS defaults; this one answers).
final class AnsweringFileSystem: FileSystem {
    let stat = FileStat(inode: 1234, mode: 0o100644, size: 99, mountID: 3)

    func entry(_ id: UInt64) -> Entry {
        Entry(nodeID: id, generation: 1, attributes: stat, entryTimeout: Timeout(seconds: 1), attributeTimeout: Timeout(seconds: 1))
    }

    func initialize(_ request: InitRequest) throws(Errno) -> FUSEInitFlags { [.posixLocks, .flockLocks, .securityContext, .createSupplementaryGroup] }
    func lookup(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno) -> Entry {
        guard name.isValidComponent else { throw .invalidArgument }
        return entry(parent &+ 1)
    }
    func getattr(_ context: RequestContext, node: UInt64, handle: UInt64?) throws(Errno) -> AttributeReply {
        AttributeReply(attributes: stat, timeout: Timeout(seconds: 1))
    }
    func readlink(_ context: RequestContext, node: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        let n = min(buffer.count, Int(node % 5000))
        if n > 0 { buffer.baseAddress!.initializeMemory(as: UInt8.self, repeating: 0x61, count: n) }
        return n
    }
    func open(_ context: RequestContext, node: UInt64, flags: UInt32) throws(Errno) -> OpenReply { OpenReply(handle: node) }
    func opendir(_ context: RequestContext, node: UInt64, flags: UInt32) throws(Errno) -> OpenReply { OpenReply(handle: node) }
    func read(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, into destination: ReadDestination) throws(Errno) -> Int {
        var done = 0
        for v in destination.buffers {
            guard let base = v.iov_base else { continue }
            base.initializeMemory(as: UInt8.self, repeating: 0x5a, count: v.iov_len)
            done += v.iov_len
        }
        return min(done, destination.length)
    }
    func write(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, from source: WriteSource, killSetIDBits: Bool, fromPageCache: Bool) throws(Errno) -> Int {
        var sum: UInt8 = 0
        for v in source.buffers {
            for byte in UnsafeRawBufferPointer(start: v.iov_base, count: v.iov_len) { sum &+= byte }
        }
        return source.length
    }
    func flush(_ context: RequestContext, node: UInt64, handle: UInt64, lockOwner: UInt64) throws(Errno) {}
    func release(_ context: RequestContext, node: UInt64, handle: UInt64, releaseFlags: UInt32) throws(Errno) {}
    func releasedir(_ context: RequestContext, node: UInt64, handle: UInt64) throws(Errno) {}
    func statfs(_ context: RequestContext, node: UInt64) throws(Errno) -> FileSystemStats {
        FileSystemStats(blocks: 100, freeBlocks: 50, availableBlocks: 40, files: 10, freeFiles: 5, blockSize: 4096, nameMax: 255, fragmentSize: 4096)
    }
    func readdir<Sink: DirectoryEntrySink>(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, plus: Bool, into sink: inout Sink) throws(Errno) {
        guard offset < 4096 else { return }
        for i in offset..<min(offset + 64, 4096) {
            let name = Array("entry-\(i)".utf8)
            guard sink.fits(nameLength: name.count) else { return }
            let added = name.withUnsafeBytes { sink.add(name: $0, inode: i, type: 8, offset: i + 1, entry: plus ? entry(i + 10) : nil) }
            if !added { return }
        }
    }
    func access(_ context: RequestContext, node: UInt64, mask: UInt32) throws(Errno) {}
    func getxattr(_ context: RequestContext, node: UInt64, name: FUSEName, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        let size = name.bytes.count * 7
        if buffer.isEmpty { return size }
        guard buffer.count >= size else { throw .range }
        buffer.baseAddress!.initializeMemory(as: UInt8.self, repeating: 0x76, count: size)
        return size
    }
    func listxattr(_ context: RequestContext, node: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        let names = Array("user.a\0user.bb\0".utf8)
        if buffer.isEmpty { return names.count }
        guard buffer.count >= names.count else { throw .range }
        buffer.copyBytes(from: names)
        return names.count
    }
    func setattr(_ context: RequestContext, node: UInt64, changes: AttributeChanges) throws(Errno) -> AttributeReply {
        AttributeReply(attributes: stat, timeout: Timeout(seconds: 1))
    }
    func mknod(_ context: RequestContext, parent: UInt64, name: FUSEName, mode: UInt32, device: UInt32, umask: UInt32) throws(Errno) -> Entry { entry(parent &+ 2) }
    func mkdir(_ context: RequestContext, parent: UInt64, name: FUSEName, mode: UInt32, umask: UInt32) throws(Errno) -> Entry { entry(parent &+ 3) }
    func symlink(_ context: RequestContext, parent: UInt64, name: FUSEName, target: FUSEName) throws(Errno) -> Entry { entry(parent &+ 4) }
    func link(_ context: RequestContext, node: UInt64, newParent: UInt64, newName: FUSEName) throws(Errno) -> Entry { entry(node) }
    func unlink(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno) {}
    func rmdir(_ context: RequestContext, parent: UInt64, name: FUSEName) throws(Errno) {}
    func rename(_ context: RequestContext, parent: UInt64, name: FUSEName, newParent: UInt64, newName: FUSEName, flags: UInt32) throws(Errno) {}
    func create(_ context: RequestContext, parent: UInt64, name: FUSEName, flags: UInt32, mode: UInt32, umask: UInt32) throws(Errno) -> (Entry, OpenReply) {
        (entry(parent &+ 5), OpenReply(handle: parent))
    }
    func tmpfile(_ context: RequestContext, parent: UInt64, flags: UInt32, mode: UInt32, umask: UInt32) throws(Errno) -> (Entry, OpenReply) {
        (entry(parent &+ 6), OpenReply(handle: parent))
    }
    func fsync(_ context: RequestContext, node: UInt64, handle: UInt64, dataOnly: Bool, directory: Bool) throws(Errno) {}
    func fallocate(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, length: UInt64, mode: UInt32) throws(Errno) {}
    func lseek(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, whence: UInt32) throws(Errno) -> UInt64 { offset }
    func copyFileRange(_ context: RequestContext, node: UInt64, handle: UInt64, offset: UInt64, toNode: UInt64, toHandle: UInt64, toOffset: UInt64, length: UInt64, flags: UInt64) throws(Errno) -> Int {
        Int(truncatingIfNeeded: min(length, 1 << 30))
    }
    func setxattr(_ context: RequestContext, node: UInt64, name: FUSEName, value: UnsafeRawBufferPointer, flags: UInt32, killSGID: Bool) throws(Errno) {}
    func removexattr(_ context: RequestContext, node: UInt64, name: FUSEName) throws(Errno) {}
    func syncfs(_ context: RequestContext, node: UInt64) throws(Errno) {}
    func getlk(_ context: RequestContext, node: UInt64, handle: UInt64, owner: UInt64, lock: FileLock) throws(Errno) -> FileLock { lock }
    func setlk(_ context: RequestContext, node: UInt64, handle: UInt64, owner: UInt64, lock: FileLock, flock: Bool, wait: CancellableWait?) throws(Errno) {
        // A waiting lock whose owner is odd waits until it is cancelled: the end of the input cancels it.
        guard let wait, owner & 1 == 1 else { return }
        try wait.run { () throws(Errno) in
            var forever = timespec(tv_sec: 3600, tv_nsec: 0)
            if nanosleep(&forever, nil) != 0 { throw Errno.current }
        }
    }
}

/// The guest's buffers of one request, in memory the fuzzer owns; a deferred reply holds it.
final class GuestBuffers: @unchecked Sendable {
    let storage: UnsafeMutableRawBufferPointer
    var readable: [iovec] = []
    var writable: [iovec] = []

    init(capacity: Int) {
        storage = .allocate(byteCount: max(capacity, 1), alignment: 16)
    }

    deinit { storage.deallocate() }
}

/// Fuzzes a FUSE session: the input is a sequence of requests, each with the shape of the guest buffers it
/// comes in. Every request gets a reply that fits its buffers (checked), and the session never traps.
///
/// Input, per request: u16 length; u8 shape (bits 0-1: readable buffers 1-4; bits 2-3: writable buffers 0-3;
/// bit 4: fix the header's len to the real length; bit 5: replace the node id, bit 6 the first argument (a
/// handle), with one an earlier reply gave; bit 7: uid 0); u8 size selector per writable buffer; then the
/// request's bytes.
public enum FUSEFuzz {
    static let logger: Logger = {
        var logger = Logger(label: "fuzz")
        logger.logLevel = .critical
        return logger
    }()

    /// With statistics on: every request's opcode, lengths and error go through the counting too.
    static let answering = FUSEServer(fileSystem: AnsweringFileSystem(), options: FUSEServerOptions(statistics: true), logger: logger)
    nonisolated(unsafe) static var answeringInputs = 0

    /// One input against a session over a file system that answers everything.
    public static func answeringFileSystem(_ data: UnsafeRawBufferPointer) {
        let deferred = DeferredWork()
        let session = FUSESession(server: answering, label: "fuzz", deferred: deferred)
        answering.reset()
        run(data, session)
        deferred.cancelAll()
        // Now and then, the exposition of what the inputs so far were counted as.
        answeringInputs += 1
        if answeringInputs % 64 == 0 { _ = answering.metrics(descriptors: nil) }
    }

    /// The passthrough file system on a scratch directory (`confinedScratch` made it the only writable place).
    nonisolated(unsafe) static var passthrough: FUSEServer<PassthroughFileSystem>?
    nonisolated(unsafe) static var passthroughInputs = 0
    public nonisolated(unsafe) static var scratchDirectory = "/tmp/swift-virtiofsd-fuzz-share"
    /// Prints each request's opcode and reply (replaying, with FUZZ_VERBOSE set).
    public nonisolated(unsafe) static var verbose = false

    /// One input against a session over the passthrough file system on `scratchDirectory`.
    public static func passthroughFileSystem(_ data: UnsafeRawBufferPointer) {
        passthroughInputs += 1
        if passthrough == nil || passthroughInputs % 500 == 0 {
            // A fresh tree now and then: what earlier inputs made does not pile up.
            passthrough?.reset()
            passthrough = nil
            ScratchTree.reset(scratchDirectory)
            guard let fs = try? PassthroughFileSystem(
                options: PassthroughOptions(sharedDirectory: scratchDirectory, xattr: true), logger: logger)
            else { return }
            passthrough = FUSEServer(fileSystem: fs, logger: logger)
        }
        guard let server = passthrough else { return }
        server.reset()
        let deferred = DeferredWork()
        let session = FUSESession(server: server, label: "fuzz", deferred: deferred)
        run(data, session)
        deferred.cancelAll()
        server.reset()
    }

    static func run<FS: FileSystem>(_ data: UnsafeRawBufferPointer, _ session: FUSESession<FS>) {
        var input = FuzzInput(data)
        var nodes: [UInt64] = [fuseRootID]
        var handles: [UInt64] = [0]
        // INIT first, as every guest does, offering everything.
        var initIn = fuse_init_in()
        initIn.major = 7
        initIn.minor = 38
        initIn.max_readahead = 131072
        initIn.flags = 0xffff_ffff
        initIn.flags2 = 0xffff_ffff
        _ = serve(session, frame(FUSEOpcode.`init`.rawValue, unique: 1, node: 0, uid: 0, withUnsafeBytes(of: initIn) { Array($0) }), readableSplits: 1, writableSizes: [80])
        var unique: UInt64 = 2
        var count = 0
        while !input.isAtEnd && count < 64 {
            count += 1
            let length = Int(input.u16() % 4200)
            let shape = input.u8()
            let readableSplits = Int(shape & 3) + 1
            let writableCount = Int(shape >> 2 & 3)
            var writableSizes: [Int] = []
            for _ in 0..<writableCount { writableSizes.append(interestingSizes[Int(input.u8()) % interestingSizes.count]) }
            if writableCount > 0 && writableSizes.allSatisfy({ $0 < 16 }) { writableSizes[0] = 4096 + 16 }
            var request = input.take(length)
            if request.count >= 40 {
                request.withUnsafeMutableBytes { raw in
                    if shape & 0x10 != 0 { raw.storeBytes(of: UInt32(raw.count), as: UInt32.self) }
                    raw.storeBytes(of: unique, toByteOffset: 8, as: UInt64.self)
                    if shape & 0x20 != 0 {
                        // The most recent first: a byte of 0 names the node the last reply gave.
                        raw.storeBytes(of: nodes[nodes.count - 1 - Int(raw[16]) % nodes.count], toByteOffset: 16, as: UInt64.self)
                    }
                    if shape & 0x40 != 0 && raw.count >= 48 {
                        raw.storeBytes(of: handles[handles.count - 1 - Int(raw[40]) % handles.count], toByteOffset: 40, as: UInt64.self)
                    }
                    if shape & 0x80 != 0 {
                        raw.storeBytes(of: UInt32(0), toByteOffset: 24, as: UInt32.self)
                        raw.storeBytes(of: UInt32(0), toByteOffset: 28, as: UInt32.self)
                    }
                }
            }
            unique += 1
            let opcode = request.count >= 8 ? request.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) } : 0
            if verbose { FileManagerless.log("request opcode \(opcode), \(request.count) bytes, readable in \(readableSplits), writable \(writableSizes)") }
            let answer = serve(session, request, readableSplits: readableSplits, writableSizes: writableSizes)
            if verbose {
                let error = answer.flatMap { $0.count >= 16 ? $0.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: Int32.self) } : nil }
                print("  \(FUSEOpcode(rawValue: opcode).map { "\($0)" } ?? "opcode \(opcode)"): \(answer == nil ? "deferred" : error.map { "error \($0)" } ?? "\(answer!.count) bytes")")
            }
            guard let reply = answer, reply.count >= 16 else { continue }
            // Remember the nodes and handles successful replies name, for later requests to use.
            let error = reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: Int32.self) }
            guard error == 0 else { continue }
            switch FUSEOpcode(rawValue: opcode) {
            case .lookup, .mknod, .mkdir, .symlink, .link, .create, .tmpfile:
                if reply.count >= 16 + 8 { nodes.append(reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: UInt64.self) }) }
                if reply.count >= 16 + 128 + 8 { handles.append(reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16 + 128, as: UInt64.self) }) }
            case .open, .opendir:
                if reply.count >= 16 + 8 { handles.append(reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: UInt64.self) }) }
            default:
                break
            }
        }
        // Deferred requests (lock waits) end when the caller cancels them; their replies land in buffers they hold.
    }

    /// A request frame: a header with `opcode` and `body`.
    static func frame(_ opcode: UInt32, unique: UInt64, node: UInt64, uid: UInt32, _ body: [UInt8]) -> [UInt8] {
        var header = fuse_in_header()
        header.len = UInt32(40 + body.count)
        header.opcode = opcode
        header.unique = unique
        header.nodeid = node
        header.uid = uid
        header.gid = uid
        return withUnsafeBytes(of: header) { Array($0) } + body
    }

    /// Runs one request through the session in buffers of the given shapes; the reply bytes (nil: deferred).
    /// Checks what the session promises: the length it reports fits the buffers and the reply's header says it.
    static func serve<FS: FileSystem>(
        _ session: FUSESession<FS>, _ request: [UInt8], readableSplits: Int, writableSizes: [Int]
    ) -> [UInt8]? {
        let buffers = GuestBuffers(capacity: request.count + writableSizes.reduce(0, +))
        let base = buffers.storage.baseAddress!
        request.withUnsafeBytes { if $0.count > 0 { base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        // The request split into `readableSplits` buffers of uneven sizes.
        var offset = 0
        for i in 0..<readableSplits {
            let size = i == readableSplits - 1 ? request.count - offset : min(request.count - offset, (i + 1) * 13)
            buffers.readable.append(iovec(iov_base: base + offset, iov_len: size))
            offset += size
        }
        var writableTotal = 0
        for size in writableSizes {
            buffers.writable.append(iovec(iov_base: base + offset, iov_len: size))
            offset += size
            writableTotal += size
        }
        let written = buffers.readable.withUnsafeBufferPointer { readable in
            buffers.writable.withUnsafeMutableBufferPointer { writable in
                session.handle(readable: readable, writable: writable, token: 0, owner: Unmanaged.passUnretained(buffers as AnyObject))
            }
        }
        guard let written else { return nil }
        precondition(Int(written) <= writableTotal, "reply of \(written) bytes in \(writableTotal) bytes of buffers")
        var reply: [UInt8] = []
        for v in buffers.writable where reply.count < Int(written) {
            reply += UnsafeRawBufferPointer(start: v.iov_base, count: min(v.iov_len, Int(written) - reply.count))
        }
        if written >= 16 {
            let announced = reply.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
            precondition(announced == written, "reply header says \(announced) bytes, \(written) written")
        }
        return reply
    }
}

/// The scratch tree the passthrough fuzz target works in.
enum ScratchTree {
    /// Empties `path` (creating it), and puts a few files of each kind in it.
    static func reset(_ path: String) {
        _ = cvfs_fuzz_reset_tree(path)
    }
}
