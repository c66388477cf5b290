// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import Glibc
import Logging
import Passthrough
import Testing
import VFSSystem

/// A temporary directory tree, removed at the end.
final class TemporaryTree {
    let path: String

    init() {
        var template = Array("/tmp/passthrough-test.XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    deinit {
        _ = system("rm -rf '\(path)'")
    }

    func write(_ relative: String, _ contents: String) {
        let fd = Glibc.open("\(path)/\(relative)", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        precondition(fd >= 0, "cannot create \(relative)")
        _ = contents.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
    }

    func mkdir(_ relative: String) { precondition(Glibc.mkdir("\(path)/\(relative)", 0o755) == 0) }
    func read(_ relative: String) -> String {
        let fd = Glibc.open("\(path)/\(relative)", O_RDONLY)
        precondition(fd >= 0, "cannot open \(relative)")
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 4096)
        let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        return String(decoding: bytes.prefix(max(n, 0)), as: UTF8.self)
    }
    func symlink(_ target: String, _ relative: String) { precondition(Glibc.symlink(target, "\(path)/\(relative)") == 0) }
    func link(_ existing: String, _ relative: String) { precondition(Glibc.link("\(path)/\(existing)", "\(path)/\(relative)") == 0) }
}

/// Collects directory entries, holding at most `capacity` of them per call.
struct CollectingSink: DirectoryEntrySink {
    var capacity: Int
    var names: [String] = []
    var offsets: [UInt64] = []
    var entries: [Entry?] = []

    func fits(nameLength: Int) -> Bool { names.count < capacity }

    mutating func add(name: UnsafeRawBufferPointer, inode: UInt64, type: UInt32, offset: UInt64, entry: Entry?) -> Bool {
        guard names.count < capacity else { return false }
        names.append(String(decoding: name, as: UTF8.self))
        offsets.append(offset)
        entries.append(entry)
        return true
    }
}

func makeFileSystem(
    _ tree: TemporaryTree, xattr: Bool = false, cache: CachePolicy = .auto, locks: Bool = true, flockLocks: Bool = true
) throws -> PassthroughFileSystem {
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    let options = PassthroughOptions(sharedDirectory: tree.path, cache: cache, xattr: xattr, locks: locks, flockLocks: flockLocks)
    return try PassthroughFileSystem(options: options, logger: logger)
}

/// Calls `body` with `name` as a FUSE name (NUL-terminated in memory).
func withName<T>(_ name: String, _ body: (FUSEName) throws -> T) rethrows -> T {
    var bytes = Array(name.utf8)
    bytes.append(0)
    return try bytes.withUnsafeBytes { try body(FUSEName(bytes: UnsafeRawBufferPointer(rebasing: $0.dropLast()))) }
}

let context = RequestContext(uid: 0, gid: 0)

extension PassthroughFileSystem {
    func lookup(_ parent: UInt64, _ name: String) throws -> Entry {
        try withName(name) { try lookup(context, parent: parent, name: $0) }
    }

    /// OPEN as a Linux guest's VFS makes it: given ESTALE (`--cache auto`: the attributes the guest holds are
    /// stale), it looks again (a GETATTR here: it refreshes what the guest was told as a LOOKUP does) and opens
    /// once more.
    func openAsGuest(_ node: UInt64, flags: Int32) throws(Errno) -> OpenReply {
        do {
            return try open(context, node: node, flags: UInt32(bitPattern: flags))
        } catch .stale {
            _ = try getattr(context, node: node, handle: nil)
            return try open(context, node: node, flags: UInt32(bitPattern: flags))
        }
    }

    /// A handle to list directory `node` with: OPENDIR's, or 0 where the guest does not open directories.
    func directoryHandle(_ node: UInt64) throws(Errno) -> UInt64 {
        do {
            return try opendir(context, node: node, flags: 0).handle
        } catch .noFunction {
            return 0
        }
    }

    /// READ of up to 64 bytes at `offset`, as text.
    func readText(_ node: UInt64, handle: UInt64, at offset: UInt64 = 0) throws -> String {
        var bytes = [UInt8](repeating: 0, count: 64)
        let n = try bytes.withUnsafeMutableBytes { p in
            try [iovec(iov_base: p.baseAddress, iov_len: p.count)].withUnsafeBufferPointer { v in
                try read(context, node: node, handle: handle, offset: offset, into: ReadDestination(buffers: v, length: p.count))
            }
        }
        return String(decoding: bytes.prefix(n), as: UTF8.self)
    }

    /// WRITE of `text` at `offset`; returns the count written.
    func writeText(_ text: String, _ node: UInt64, handle: UInt64, at offset: UInt64, fromPageCache: Bool = false) throws -> Int {
        var bytes = Array(text.utf8)
        return try bytes.withUnsafeMutableBytes { p in
            try [iovec(iov_base: p.baseAddress, iov_len: p.count)].withUnsafeBufferPointer { v in
                try write(context, node: node, handle: handle, offset: offset, from: WriteSource(buffers: v, length: p.count),
                          killSetIDBits: false, fromPageCache: fromPageCache)
            }
        }
    }
}

@Suite("Passthrough file system")
struct PassthroughFileSystemTests {
    @Test("lookup returns the host's attributes, and a hard link is the same node")
    func lookupAndHardLinks() throws {
        let tree = TemporaryTree()
        tree.write("file", "hello")
        tree.link("file", "again")
        let fs = try makeFileSystem(tree)
        let a = try fs.lookup(fuseRootID, "file")
        let b = try fs.lookup(fuseRootID, "again")
        #expect(a.nodeID == b.nodeID)
        #expect(a.attributes.size == 5 && a.attributes.linkCount == 2 && a.attributes.fileType == .regular)
        #expect(fs.inodes.lookupCount(a.nodeID) == 2)
        #expect(a.attributes.mountID != 0)
        fs.forget(context, node: a.nodeID, count: 1)
        #expect(fs.inodes.lookupCount(a.nodeID) == 1)
        fs.forget(context, node: a.nodeID, count: 1)
        #expect(fs.inodes.lookupCount(a.nodeID) == nil)
        #expect(throws: Errno.badFileDescriptor) { try fs.getattr(context, node: a.nodeID, handle: nil) }
    }

    @Test("a symlink is looked up as itself, never followed, and cannot be opened")
    func symlinksAreNotFollowed() throws {
        let tree = TemporaryTree()
        tree.symlink("/etc/passwd", "outside")
        tree.symlink("/", "root-link")
        let fs = try makeFileSystem(tree)
        let link = try fs.lookup(fuseRootID, "outside")
        #expect(link.attributes.fileType == .symbolicLink)
        var buffer = [UInt8](repeating: 0, count: 256)
        let n = try buffer.withUnsafeMutableBytes { try fs.readlink(context, node: link.nodeID, into: $0) }
        #expect(String(decoding: buffer[..<n], as: UTF8.self) == "/etc/passwd")
        #expect(throws: Errno.badFileDescriptor) { try fs.open(context, node: link.nodeID, flags: UInt32(O_RDONLY)) }  // only regular files and directories are opened
        let rootLink = try fs.lookup(fuseRootID, "root-link")
        // Looking a name up inside a symlink to / does not reach the host's /etc.
        #expect(throws: Errno.notDirectory) { try fs.lookup(rootLink.nodeID, "etc") }
    }

    @Test("'..' of the shared directory is the shared directory, and '.' is the node itself")
    func dotDot() throws {
        let tree = TemporaryTree()
        tree.mkdir("sub")
        let fs = try makeFileSystem(tree)
        #expect(try fs.lookup(fuseRootID, "..").nodeID == fuseRootID)
        #expect(try fs.lookup(fuseRootID, ".").nodeID == fuseRootID)
        let sub = try fs.lookup(fuseRootID, "sub")
        #expect(try fs.lookup(sub.nodeID, "..").nodeID == fuseRootID)
        #expect(try fs.lookup(sub.nodeID, ".").nodeID == sub.nodeID)
    }

    @Test("names with '/', empty names and names over 255 bytes are refused")
    func badNames() throws {
        let tree = TemporaryTree()
        tree.mkdir("sub")
        tree.write("sub/file", "x")
        let fs = try makeFileSystem(tree)
        #expect(throws: Errno.invalidArgument) { try fs.lookup(fuseRootID, "sub/file") }
        #expect(throws: Errno.invalidArgument) { try fs.lookup(fuseRootID, "../../etc") }
        #expect(throws: Errno.invalidArgument) { try fs.lookup(fuseRootID, "") }
        #expect(throws: Errno.nameTooLong) { try fs.lookup(fuseRootID, String(repeating: "n", count: 256)) }
        #expect(try fs.lookup(fuseRootID, "missing").isNegative)
        #expect(throws: Errno.badFileDescriptor) { try fs.lookup(999_999, "sub") }
    }

    @Test("files answer NOFLUSH only when the guest keeps its own locks: FLUSH is how we learn a lock owner closed")
    func noFlushWithoutLocks() throws {
        let tree = TemporaryTree()
        tree.write("file", "x")
        for locks in [true, false] {
            let fs = try makeFileSystem(tree, cache: .always, locks: locks)
            let node = try fs.lookup(fuseRootID, "file")
            let opened = try fs.open(context, node: node.nodeID, flags: UInt32(O_RDONLY))
            #expect(opened.flags.contains(.noFlush) == !locks)
            #expect(opened.flags.contains(.keepCache))
            let (_, created) = try withName("new-\(locks)") {
                try fs.create(context, parent: fuseRootID, name: $0, flags: UInt32(O_WRONLY | O_CREAT), mode: 0o100644, umask: 0)
            }
            #expect(created.flags.contains(.noFlush) == !locks)
        }
    }

    @Test("in always with host locks off the guest stops opening files: OPEN is ENOSYS, handle 0 reaches the node's file")
    func noOpenInAlways() throws {
        let tree = TemporaryTree()
        tree.write("file", "0123456789")
        tree.mkdir("dir")
        tree.symlink("file", "link")
        precondition(mkfifo("\(tree.path)/fifo", 0o644) == 0)
        for (cache, posix, flock) in [(CachePolicy.always, false, false), (.always, false, true), (.always, true, false),
                                      (.auto, false, false), (.metadata, false, false)] {
            let fs = try makeFileSystem(tree, cache: cache, locks: posix, flockLocks: flock)
            let opens = cache != .always || flock || posix
            #expect(try fs.initialize(InitRequest(major: 7, minor: 41, maxReadahead: 0, flags: [])).contains(.atomicOpenTruncate) == opens)
            let node = try fs.lookup(fuseRootID, "file").nodeID
            if opens {
                // Handle 0 stays a handle nobody was given.
                #expect(throws: Errno.badFileDescriptor) { try fs.readText(node, handle: 0) }
                #expect(throws: Errno.badFileDescriptor) { try fs.flush(context, node: node, handle: 0, lockOwner: 1) }
                _ = try fs.open(context, node: node, flags: UInt32(O_RDONLY))
                continue
            }
            #expect(throws: Errno.noFunction) { try fs.open(context, node: node, flags: UInt32(O_RDONLY)) }
            // Directories are still opened (or not) as their cache mode says.
            _ = try? fs.opendir(context, node: try fs.lookup(fuseRootID, "dir").nodeID, flags: 0)
            #expect(try fs.readText(node, handle: 0, at: 2) == "23456789")
            #expect(try fs.writeText("ab", node, handle: 0, at: 8) == 2)
            #expect(try fs.readText(node, handle: 0) == "01234567ab")
            try fs.fsync(context, node: node, handle: 0, dataOnly: false, directory: false)
            try fs.fallocate(context, node: node, handle: 0, offset: 0, length: 20, mode: 0)
            #expect(try fs.lseek(context, node: node, handle: 0, offset: 0, whence: 4 /* SEEK_HOLE */) == 20)
            // An open with O_TRUNC arrives as a SETATTR with handle 0, which truncates through the node.
            let truncated = try fs.setattr(context, node: node, changes: AttributeChanges(handle: 0, size: 4))
            #expect(truncated.attributes.size == 4)
            #expect(try fs.readText(node, handle: 0) == "0123")
            // With POSIX locks off FLUSH is ENOSYS, and the guest sends no more.
            #expect(throws: Errno.noFunction) { try fs.flush(context, node: node, handle: 0, lockOwner: 1) }
            // Only regular files are ever opened for handle 0: never a directory, a symlink or a FIFO.
            for name in ["dir", "link", "fifo"] {
                let other = try fs.lookup(fuseRootID, name).nodeID
                #expect(throws: Errno.badFileDescriptor) { try fs.readText(other, handle: 0) }
                #expect(throws: Errno.badFileDescriptor) { try fs.writeText("x", other, handle: 0, at: 0) }
            }
            #expect(fs.handles.count == 0)
        }
    }

    @Test("without opens, a file held by handle stays readable after its name goes (unlink, rename over it)")
    func unlinkedFileStaysReadableWithoutOpens() throws {
        let tree = TemporaryTree()
        tree.write("gone", "unlinked data")
        tree.write("over", "renamed-over data")
        tree.write("new", "x")
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let options = PassthroughOptions(sharedDirectory: tree.path, cache: .always, locks: false, flockLocks: false,
                                         inodeFileHandles: .prefer)
        let fs = try PassthroughFileSystem(options: options, logger: logger)
        let gone = try fs.lookup(fuseRootID, "gone").nodeID
        let over = try fs.lookup(fuseRootID, "over").nodeID
        #expect(fs.inodes.get(gone)?.holdsDescriptor == false)
        try withName("gone") { try fs.unlink(context, parent: fuseRootID, name: $0) }
        try withName("new") { new in
            try withName("over") { try fs.rename(context, parent: fuseRootID, name: new, newParent: fuseRootID, newName: $0, flags: 0) }
        }
        #expect(try fs.readText(gone, handle: 0) == "unlinked data")
        #expect(try fs.readText(over, handle: 0) == "renamed-over data")
        // A name of a file that keeps another is not pinned: one descriptor per such unlink would pile up.
        tree.write("kept", "x")
        tree.link("kept", "alias")
        let kept = try fs.lookup(fuseRootID, "kept").nodeID
        try withName("alias") { try fs.unlink(context, parent: fuseRootID, name: $0) }
        #expect(fs.inodes.get(kept)?.isPinned == false)
        #expect(fs.inodes.get(gone)?.isPinned == true)
        // The kernel sends no RELEASE once OPEN is ENOSYS, not even for CREATE's files: they get handle 0, and
        // an O_TMPFILE file, which has no name, is pinned to its node.
        let (created, createdOpen) = try withName("created") {
            try fs.create(context, parent: fuseRootID, name: $0, flags: UInt32(O_WRONLY | O_CREAT), mode: 0o100444, umask: 0)
        }
        let (temporary, temporaryOpen) = try fs.tmpfile(context, parent: fuseRootID, flags: UInt32(O_RDWR), mode: 0o100600, umask: 0)
        #expect(createdOpen.handle == 0 && temporaryOpen.handle == 0)
        #expect(fs.handles.count == 0)
        #expect(try fs.writeText("new", created.nodeID, handle: 0, at: 0) == 3)
        #expect(try fs.writeText("temporary", temporary.nodeID, handle: 0, at: 0) == 9)
        #expect(try fs.readText(temporary.nodeID, handle: 0) == "temporary")
        #expect(tree.read("created") == "new")
    }

    @Test("a page the guest's cache writes back through an O_APPEND handle lands at its offset; an append at the end")
    func pageCacheWriteThroughAppendHandle() throws {
        let tree = TemporaryTree()
        tree.write("file", "0123456789")
        let fs = try makeFileSystem(tree)
        let node = try fs.lookup(fuseRootID, "file").nodeID
        let opened = try fs.open(context, node: node, flags: UInt32(O_WRONLY | O_APPEND))
        #expect(try fs.writeText("ab", node, handle: opened.handle, at: 2, fromPageCache: true) == 2)
        #expect(tree.read("file") == "01ab456789")
        // The guest's own append: at the host's end of the file, whatever offset the guest believed.
        #expect(try fs.writeText("cd", node, handle: opened.handle, at: 2) == 2)
        #expect(tree.read("file") == "01ab456789cd")
    }

    @Test("a lock owner that locked through one handle only (an OFD lock's file) loses its locks at that handle's RELEASE")
    func openFileDescriptionLocksEndAtRelease() throws {
        let tree = TemporaryTree()
        tree.write("file", "x")
        let fs = try makeFileSystem(tree)
        let node = try fs.lookup(fuseRootID, "file").nodeID
        let first = try fs.open(context, node: node, flags: UInt32(O_RDWR)).handle
        let second = try fs.open(context, node: node, flags: UInt32(O_RDWR)).handle
        func lock(_ start: UInt64) -> FileLock { FileLock(start: start, end: start + 9, type: UInt32(F_WRLCK), pid: 0) }
        func held(_ start: UInt64) throws -> Bool {
            try fs.getlk(context, node: node, handle: second, owner: 3, lock: lock(start)).type == UInt32(F_WRLCK)
        }
        // Owner 100: F_OFD_SETLK through the first file. Owner 7: a process locking through both files.
        try fs.setlk(context, node: node, handle: first, owner: 100, lock: lock(0), flock: false, wait: nil)
        try fs.setlk(context, node: node, handle: first, owner: 7, lock: lock(20), flock: false, wait: nil)
        try fs.setlk(context, node: node, handle: second, owner: 7, lock: lock(40), flock: false, wait: nil)
        #expect(try held(0) && held(20) && held(40))
        try fs.release(context, node: node, handle: first, releaseFlags: 0)
        #expect(try !held(0))
        #expect(try held(20) && held(40))
    }

    @Test("lseek hands the guest's offset to the host: SEEK_DATA and SEEK_HOLE from a negative offset are ENXIO")
    func lseekNegativeOffset() throws {
        let tree = TemporaryTree()
        tree.write("file", "0123456789")
        let fs = try makeFileSystem(tree)
        let node = try fs.lookup(fuseRootID, "file").nodeID
        let opened = try fs.open(context, node: node, flags: UInt32(O_RDONLY))
        for whence: UInt32 in [3, 4] {  // SEEK_DATA, SEEK_HOLE
            #expect(throws: Errno(rawValue: ENXIO)) {
                try fs.lseek(context, node: node, handle: opened.handle, offset: UInt64(bitPattern: -5), whence: whence)
            }
        }
        #expect(try fs.lseek(context, node: node, handle: opened.handle, offset: 3, whence: 3) == 3)
    }

    @Test("POSIX locks and flock are switched apart: each refuses with ENOSYS alone, NOFLUSH follows POSIX locks")
    func lockSwitches() throws {
        let tree = TemporaryTree()
        tree.write("file", "x")
        let whole = FileLock(start: 0, end: UInt64(Int64.max), type: UInt32(F_WRLCK), pid: 0)
        /// The error a call ends with, or nil.
        func error(_ body: () throws(Errno) -> Void) -> Errno? {
            do { try body() } catch { return error }
            return nil
        }
        for (posix, flock) in [(true, false), (false, true)] {
            let fs = try makeFileSystem(tree, locks: posix, flockLocks: flock)
            let node = try fs.lookup(fuseRootID, "file")
            let opened = try fs.open(context, node: node.nodeID, flags: UInt32(O_RDWR))
            #expect(opened.flags.contains(.noFlush) == !posix)
            let record = error { () throws(Errno) in
                try fs.setlk(context, node: node.nodeID, handle: opened.handle, owner: 1, lock: whole, flock: false, wait: nil)
            }
            let file = error { () throws(Errno) in
                try fs.setlk(context, node: node.nodeID, handle: opened.handle, owner: 1, lock: whole, flock: true, wait: nil)
            }
            let query = error { () throws(Errno) in
                _ = try fs.getlk(context, node: node.nodeID, handle: opened.handle, owner: 2, lock: whole)
            }
            #expect(record == (posix ? nil : .noFunction))
            #expect(file == (flock ? nil : .noFunction))
            #expect(query == (posix ? nil : .noFunction))
        }
    }

    @Test("a missing name is a negative entry the guest may keep as long as a found one, except with cache never")
    func negativeEntries() throws {
        let tree = TemporaryTree()
        tree.mkdir("sub")
        for mode in CachePolicy.allCases {
            let fs = try makeFileSystem(tree, cache: mode)
            if mode == .never {
                #expect(throws: Errno.noEntry) { try fs.lookup(fuseRootID, "missing") }
                continue
            }
            let missing = try fs.lookup(fuseRootID, "missing")
            #expect(missing.nodeID == 0)
            #expect(missing.entryTimeout == mode.timeout)
            #expect(missing.attributeTimeout == .zero)
            // Only a name that is not there: a path through a file is still ENOTDIR, and a found name a node.
            tree.write("file", "x")
            #expect(throws: Errno.notDirectory) { try fs.lookup(try fs.lookup(fuseRootID, "file").nodeID, "x") }
            #expect(try fs.lookup(fuseRootID, "sub").nodeID != 0)
        }
    }

    @Test("open and read go through a handle; a handle the guest never got is EBADF")
    func openRead() throws {
        let tree = TemporaryTree()
        tree.write("data", "0123456789")
        let fs = try makeFileSystem(tree)
        let node = try fs.lookup(fuseRootID, "data")
        let opened = try fs.open(context, node: node.nodeID, flags: UInt32(O_RDONLY))
        var a = [UInt8](repeating: 0, count: 3)
        var b = [UInt8](repeating: 0, count: 10)
        let n = try a.withUnsafeMutableBytes { pa in
            try b.withUnsafeMutableBytes { pb in
                let vectors = [iovec(iov_base: pa.baseAddress, iov_len: 3), iovec(iov_base: pb.baseAddress, iov_len: 10)]
                return try vectors.withUnsafeBufferPointer {
                    try fs.read(context, node: node.nodeID, handle: opened.handle, offset: 2, into: ReadDestination(buffers: $0, length: 13))
                }
            }
        }
        #expect(n == 8)
        #expect(a == Array("234".utf8) && Array(b.prefix(5)) == Array("56789".utf8))
        try fs.release(context, node: node.nodeID, handle: opened.handle, releaseFlags: 0)
        #expect(throws: Errno.badFileDescriptor) {
            try [iovec]().withUnsafeBufferPointer {
                try fs.read(context, node: node.nodeID, handle: opened.handle, offset: 0, into: ReadDestination(buffers: $0, length: 1))
            }
        }
        #expect(fs.handles.count == 0)
    }

    @Test("READDIR continues from its offsets and lists every entry exactly once")
    func readdirContinuation() throws {
        let tree = TemporaryTree()
        tree.mkdir("big")
        for i in 0..<1000 { tree.write("big/f\(i)", "") }
        let fs = try makeFileSystem(tree, cache: .never)
        let dir = try fs.lookup(fuseRootID, "big")
        let handle = try fs.opendir(context, node: dir.nodeID, flags: 0).handle
        var seen: [String] = []
        var offset: UInt64 = 0
        var calls = 0
        while true {
            var sink = CollectingSink(capacity: 37)
            try fs.readdir(context, node: dir.nodeID, handle: handle, offset: offset, plus: false, into: &sink)
            if sink.names.isEmpty { break }
            seen += sink.names
            offset = sink.offsets.last!
            calls += 1
        }
        #expect(calls >= 1000 / 37)
        #expect(seen.count == 1002)
        #expect(Set(seen) == Set((0..<1000).map { "f\($0)" } + [".", ".."]))
        try fs.releasedir(context, node: dir.nodeID, handle: handle)
    }

    @Test("with directories cached (metadata, auto, always), OPENDIR answers ENOSYS and READDIR and FSYNCDIR serve handle 0",
          arguments: [CachePolicy.metadata, .auto, .always])
    func directoriesWithoutOpen(cache: CachePolicy) throws {
        let tree = TemporaryTree()
        tree.mkdir("d")
        for i in 0..<300 { tree.write("d/f\(i)", "") }
        let fs = try makeFileSystem(tree, cache: cache)
        let dir = try fs.lookup(fuseRootID, "d")
        #expect(throws: Errno.noFunction) { try fs.opendir(context, node: dir.nodeID, flags: 0) }
        var seen: [String] = []
        var offset: UInt64 = 0
        while true {
            var sink = CollectingSink(capacity: 41)
            try fs.readdir(context, node: dir.nodeID, handle: 0, offset: offset, plus: true, into: &sink)
            if sink.names.isEmpty { break }
            seen += sink.names
            offset = sink.offsets.last!
        }
        #expect(seen.count == 302 && Set(seen).count == 302)
        #expect(fs.handles.count == 0)
        try fs.fsync(context, node: dir.nodeID, handle: 0, dataOnly: false, directory: true)
        // A file is not a directory, and handle 0 stays invalid for files.
        let file = try fs.lookup(dir.nodeID, "f0")
        var sink = CollectingSink(capacity: 1)
        #expect(throws: Errno.notDirectory) { try fs.readdir(context, node: file.nodeID, handle: 0, offset: 0, plus: false, into: &sink) }
        #expect(throws: Errno.badFileDescriptor) { try fs.fsync(context, node: file.nodeID, handle: 0, dataOnly: false, directory: false) }
        // flock on a directory nobody opened has no release to end it.
        #expect(throws: Errno.noLocksAvailable) {
            try fs.setlk(context, node: dir.nodeID, handle: 0, owner: 1, lock: FileLock(start: 0, end: 0, type: UInt32(F_WRLCK), pid: 0), flock: true, wait: nil)
        }
    }

    @Test("with never, directories are opened and handle 0 is no handle", arguments: [CachePolicy.never])
    func directoriesWithOpen(cache: CachePolicy) throws {
        let tree = TemporaryTree()
        tree.mkdir("d")
        let fs = try makeFileSystem(tree, cache: cache)
        let dir = try fs.lookup(fuseRootID, "d")
        let handle = try fs.opendir(context, node: dir.nodeID, flags: 0).handle
        #expect(handle != 0)
        var sink = CollectingSink(capacity: 10)
        #expect(throws: Errno.badFileDescriptor) { try fs.readdir(context, node: dir.nodeID, handle: 0, offset: 0, plus: false, into: &sink) }
        try fs.releasedir(context, node: dir.nodeID, handle: handle)
    }

    @Test("READDIRPLUS looks up each entry (not '.' and '..'), and an entry that does not fit is not counted")
    func readdirplusCounts() throws {
        let tree = TemporaryTree()
        tree.mkdir("d")
        for i in 0..<5 { tree.write("d/f\(i)", "") }
        let fs = try makeFileSystem(tree)
        let dir = try fs.lookup(fuseRootID, "d")
        let handle = try fs.directoryHandle(dir.nodeID)
        var sink = CollectingSink(capacity: 100)
        try fs.readdir(context, node: dir.nodeID, handle: handle, offset: 0, plus: true, into: &sink)
        #expect(sink.names.count == 7)
        for (name, entry) in zip(sink.names, sink.entries) {
            if name == "." || name == ".." {
                #expect(entry == nil)
            } else {
                #expect(entry != nil)
                #expect(fs.inodes.lookupCount(entry!.nodeID) == 1)
            }
        }
        #expect(fs.inodes.count == 1 + 5)
    }

    @Test("--posix-acl is kept where the shared directory's file system has ACLs, and turned off where it answers EOPNOTSUPP (the guest then checks modes alone)")
    func posixACLNeedsTheFileSystem() throws {
        let tree = TemporaryTree()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let local = try PassthroughFileSystem(options: PassthroughOptions(sharedDirectory: tree.path, posixACL: true), logger: logger)
        #expect(local.options.posixACL && local.options.xattr)
        // sysfs keeps no ACLs: getxattr of system.posix_acl_access answers EOPNOTSUPP.
        let without = try PassthroughFileSystem(options: PassthroughOptions(sharedDirectory: "/sys", posixACL: true), logger: logger)
        #expect(!without.options.posixACL && without.options.xattr)
    }

    @Test("READDIRPLUS never leaves out an entry whose lookup fails (but for ENOENT), nor fails the listing: the entry comes without attributes")
    func readdirplusFailedLookup() throws {
        // An entry the daemon cannot look up while the ones around it can: with --inode-file-handles=mandatory,
        // a proc mount inside the tree (proc gives no file handles).
        let tree = TemporaryTree()
        tree.mkdir("d")
        for i in 0..<40 { tree.write("d/f\(i)", "") }
        tree.mkdir("d/proc")
        guard mount("proc", "\(tree.path)/d/proc", "proc", 0, nil) == 0 else {
            Issue.record("cannot mount proc for the test: errno \(errno)")
            return
        }
        defer { umount2("\(tree.path)/d/proc", Int32(MNT_DETACH)) }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let fs = try PassthroughFileSystem(options: PassthroughOptions(sharedDirectory: tree.path, inodeFileHandles: .mandatory), logger: logger)
        let dir = try fs.lookup(fuseRootID, "d")
        #expect(throws: Errno.self) { try fs.lookup(dir.nodeID, "proc") }
        let handle = try fs.directoryHandle(dir.nodeID)
        var seen: [String] = []
        var entries: [Entry?] = []
        var offset: UInt64 = 0
        while true {
            // A few entries a reply, so that "proc" is not always in the first.
            var sink = CollectingSink(capacity: 7)
            try fs.readdir(context, node: dir.nodeID, handle: handle, offset: offset, plus: true, into: &sink)
            if sink.names.isEmpty { break }
            seen += sink.names
            entries += sink.entries
            offset = sink.offsets.last!
        }
        // Every name, "proc" among them without a node (the guest looks it up itself and gets the error); the
        // files around it with theirs.
        #expect(seen.count == 43, "\(seen)")
        let proc = seen.firstIndex(of: "proc")
        #expect(proc != nil && entries[proc!] == nil)
        #expect(zip(seen, entries).filter { $0.0.hasPrefix("f") && $0.1 != nil }.count == 40)
        if handle != 0 { try fs.releasedir(context, node: dir.nodeID, handle: handle) }
    }

    @Test("statfs, access and the xattr switch")
    func misc() throws {
        let tree = TemporaryTree()
        tree.write("f", "")
        let fs = try makeFileSystem(tree)
        let stats = try fs.statfs(context, node: fuseRootID)
        #expect(stats.blocks > 0 && stats.nameMax == 255)
        let node = try fs.lookup(fuseRootID, "f")
        try fs.access(context, node: node.nodeID, mask: 4 | 2)
        #expect(throws: Errno.permissionDenied) { try fs.access(context, node: node.nodeID, mask: 1) }
        #expect(throws: Errno.permissionDenied) {
            try fs.access(RequestContext(uid: 4242, gid: 4242), node: node.nodeID, mask: 2)
        }
        #expect(throws: Errno.noFunction) {
            try withName("user.x") { try fs.getxattr(context, node: node.nodeID, name: $0, into: UnsafeMutableRawBufferPointer(start: nil, count: 0)) }
        }
        let withXattr = try makeFileSystem(tree, xattr: true)
        let again = try withXattr.lookup(fuseRootID, "f")
        #expect(throws: Errno.noData) {
            try withName("user.none") { try withXattr.getxattr(context, node: again.nodeID, name: $0, into: UnsafeMutableRawBufferPointer(start: nil, count: 0)) }
        }
    }

    @Test("DESTROY drops every node and handle but the root")
    func destroy() throws {
        let tree = TemporaryTree()
        tree.write("f", "")
        let fs = try makeFileSystem(tree)
        let node = try fs.lookup(fuseRootID, "f")
        _ = try fs.open(context, node: node.nodeID, flags: UInt32(O_RDONLY))
        fs.destroy()
        #expect(fs.inodes.count == 0 && fs.handles.count == 0)
        #expect(try fs.getattr(context, node: fuseRootID, handle: nil).attributes.fileType == .directory)
    }
}
