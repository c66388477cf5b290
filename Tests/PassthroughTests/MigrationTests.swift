// SPDX-License-Identifier: Apache-2.0

import FUSE
import Glibc
import Logging
import Passthrough
import Testing
import VFSSystem

func makeMigratingFileSystem(_ tree: TemporaryTree, _ migration: MigrationOptions) throws -> PassthroughFileSystem {
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    var options = PassthroughOptions(sharedDirectory: tree.path, cache: .never)
    options.migration = migration
    return try PassthroughFileSystem(options: options, logger: logger)
}

extension PassthroughFileSystem {
    func savedState() throws -> [UInt8] {
        var writer = StateWriter()
        try saveState(into: &writer)
        return writer.bytes
    }

    func load(_ bytes: [UInt8]) throws {
        var reader = StateReader(bytes)
        try loadState(from: &reader)
        #expect(reader.isAtEnd)
    }
}

@Suite("Passthrough file system: migration")
struct MigrationTests {
    @Test("the nodes and open handles the guest holds move to another daemon under the same ids, by path and by file handle",
          arguments: [MigrationOptions.Mode.findPaths, .fileHandles])
    func roundTrip(mode: MigrationOptions.Mode) throws {
        let tree = TemporaryTree()
        tree.mkdir("dir")
        tree.write("dir/file", "hello, destination")
        tree.write("moved", "moved content")
        let source = try makeMigratingFileSystem(tree, MigrationOptions(mode: mode))
        let dir = try source.lookup(fuseRootID, "dir")
        let file = try source.lookup(dir.nodeID, "file")
        _ = try source.lookup(dir.nodeID, "file")
        let moved = try source.lookup(fuseRootID, "moved")
        let opened = try source.open(context, node: file.nodeID, flags: UInt32(O_RDWR))
        let openedMoved = try source.open(context, node: moved.nodeID, flags: UInt32(O_RDONLY))
        let listing = try source.opendir(context, node: dir.nodeID, flags: 0)
        // Renamed on the host after the guest looked it up: found under its new name.
        #expect(Glibc.rename("\(tree.path)/moved", "\(tree.path)/dir/renamed") == 0)

        let state = try source.savedState()
        let destination = try makeMigratingFileSystem(tree, MigrationOptions(mode: mode, verifyHandles: true))
        try destination.load(state)
        #expect(destination.inodes.lookupCount(dir.nodeID) == 1)
        #expect(destination.inodes.lookupCount(file.nodeID) == 2)
        #expect(destination.inodes.lookupCount(moved.nodeID) == 1)
        #expect(try destination.readText(file.nodeID, handle: opened.handle) == "hello, destination")
        #expect(try destination.readText(moved.nodeID, handle: openedMoved.handle) == "moved content")
        #expect(try destination.writeText("HELLO", file.nodeID, handle: opened.handle, at: 0) == 5)
        #expect(tree.read("dir/file") == "HELLO, destination")
        var sink = CollectingSink(capacity: 10)
        try destination.readdir(context, node: dir.nodeID, handle: listing.handle, offset: 0, plus: false, into: &sink)
        #expect(Set(sink.names) == [".", "..", "file", "renamed"])
        // A lookup finds the node the guest holds, not a new one; new ids do not collide with the moved ones.
        #expect(try destination.lookup(dir.nodeID, "file").nodeID == file.nodeID)
        #expect(try destination.lookup(dir.nodeID, "renamed").nodeID == moved.nodeID)
        tree.write("dir/new", "x")
        let new = try destination.lookup(dir.nodeID, "new")
        #expect(![dir.nodeID, file.nodeID, moved.nodeID].contains(new.nodeID))
        let reopened = try destination.open(context, node: new.nodeID, flags: UInt32(O_RDONLY))
        #expect(![opened.handle, openedMoved.handle, listing.handle].contains(reopened.handle))
        // FORGET takes the moved lookups down to zero.
        destination.forget(context, node: file.nodeID, count: 3)
        #expect(destination.inodes.lookupCount(file.nodeID) == nil)
        #expect(try destination.lookup(dir.nodeID, "file").nodeID != file.nodeID)
    }

    @Test("a file the guest holds open and the host deleted: abort fails the save, guest-error moves it as lost (EIO)")
    func deletedOpenFile() throws {
        let tree = TemporaryTree()
        tree.write("doomed", "gone soon")
        tree.write("forgotten", "replaced")
        let abort = try makeMigratingFileSystem(tree, MigrationOptions(onError: .abort))
        let doomed = try abort.lookup(fuseRootID, "doomed")
        let opened = try abort.open(context, node: doomed.nodeID, flags: UInt32(O_RDONLY))
        // Looked up, not open, then deleted: nothing can reach it but a FORGET, so it never fails a migration.
        let forgotten = try abort.lookup(fuseRootID, "forgotten")
        #expect(unlink("\(tree.path)/forgotten") == 0)
        // As is a directory removed while a guest process has it as its working directory.
        tree.mkdir("removed")
        let removed = try abort.lookup(fuseRootID, "removed")
        #expect(rmdir("\(tree.path)/removed") == 0)
        // ...and a destination under abort takes it up as lost (the source's call, not a failure of its own).
        let strict = try makeMigratingFileSystem(tree, MigrationOptions(onError: .abort))
        try strict.load(try abort.savedState())
        #expect(throws: Errno.ioError) { try strict.getattr(context, node: forgotten.nodeID, handle: nil) }
        #expect(throws: Errno.ioError) { try strict.getattr(context, node: removed.nodeID, handle: nil) }
        #expect(try strict.readText(doomed.nodeID, handle: opened.handle) == "gone soon")
        #expect(unlink("\(tree.path)/doomed") == 0)
        #expect(throws: MigrationError.self) { try abort.savedState() }

        let lenient = try makeMigratingFileSystem(tree, MigrationOptions(onError: .guestError))
        tree.write("doomed2", "gone soon")
        let doomed2 = try lenient.lookup(fuseRootID, "doomed2")
        let opened2 = try lenient.open(context, node: doomed2.nodeID, flags: UInt32(O_RDONLY))
        #expect(unlink("\(tree.path)/doomed2") == 0)
        let state = try lenient.savedState()
        let destination = try makeMigratingFileSystem(tree, MigrationOptions(onError: .guestError))
        try destination.load(state)
        #expect(throws: Errno.ioError) { try destination.getattr(context, node: doomed2.nodeID, handle: nil) }
        #expect(throws: Errno.badFileDescriptor) { try destination.readText(doomed2.nodeID, handle: opened2.handle) }
        destination.forget(context, node: doomed2.nodeID, count: 1)
        #expect(destination.inodes.lookupCount(doomed2.nodeID) == nil)
        _ = opened
    }

    @Test("file handles: a deleted file or removed directory nothing has open goes as lost, an open deleted file by its handle")
    func deletedByHandle() throws {
        let tree = TemporaryTree()
        tree.write("forgotten", "replaced")
        tree.mkdir("removed")
        tree.write("doomed", "still open")
        let source = try makeMigratingFileSystem(tree, MigrationOptions(mode: .fileHandles))
        let forgotten = try source.lookup(fuseRootID, "forgotten")
        let removed = try source.lookup(fuseRootID, "removed")
        let doomed = try source.lookup(fuseRootID, "doomed")
        let opened = try source.open(context, node: doomed.nodeID, flags: UInt32(O_RDONLY))
        #expect(unlink("\(tree.path)/forgotten") == 0 && rmdir("\(tree.path)/removed") == 0)
        #expect(unlink("\(tree.path)/doomed") == 0)
        let destination = try makeMigratingFileSystem(tree, MigrationOptions(mode: .fileHandles, verifyHandles: true))
        try destination.load(try source.savedState())
        #expect(throws: Errno.ioError) { try destination.getattr(context, node: forgotten.nodeID, handle: nil) }
        #expect(throws: Errno.ioError) { try destination.getattr(context, node: removed.nodeID, handle: nil) }
        #expect(try destination.readText(doomed.nodeID, handle: opened.handle) == "still open")
    }

    @Test("the destination refuses a state whose file is not the source's with --migration-verify-handles")
    func verifyHandles() throws {
        let tree = TemporaryTree()
        tree.write("file", "one")
        let source = try makeMigratingFileSystem(tree, MigrationOptions())
        let file = try source.lookup(fuseRootID, "file")
        let state = try source.savedState()
        // Another file now has the name.
        #expect(unlink("\(tree.path)/file") == 0)
        tree.write("other", "two")
        tree.write("file", "three")
        let verifying = try makeMigratingFileSystem(tree, MigrationOptions(verifyHandles: true))
        #expect(throws: MigrationError.self) { try verifying.load(state) }
        let trusting = try makeMigratingFileSystem(tree, MigrationOptions())
        try trusting.load(state)
        #expect(trusting.inodes.lookupCount(file.nodeID) == 1)
    }

    /// A state with one node, hand-made: `path` for the node with id `id`.
    func state(id: UInt64 = 1 << 7 | 3, lookups: UInt64 = 1, type: UInt8 = 0, path: [UInt8], handles: [(UInt64, UInt64, Int32)] = [])
        -> [UInt8]
    {
        var writer = StateWriter()
        writer.u8(0)
        writer.u64(0)
        writer.u64(1)
        writer.u64(id)
        writer.u64(lookups)
        writer.u8(type)
        writer.u64(0)
        writer.u64(0)
        writer.u8(1)
        writer.data(path)
        writer.u64(UInt64(handles.count))
        for (handle, node, flags) in handles {
            writer.u64(handle)
            writer.u64(node)
            writer.i32(flags)
        }
        return writer.bytes
    }

    @Test("a node whose id lies in another shard than its file hashes to (the hash is seeded per process) is found by lookup, and forgotten")
    func nodeInAnotherShard() throws {
        let tree = TemporaryTree()
        tree.write("file", "x")
        // Its file hashes to one shard of 64: with ids in two shards, at least one is elsewhere.
        for shard: UInt64 in [3, 4] {
            let id = 1 << 7 | shard
            let fs = try makeMigratingFileSystem(tree, MigrationOptions())
            try fs.load(state(id: id, lookups: 2, path: Array("file".utf8)))
            #expect(try fs.lookup(fuseRootID, "file").nodeID == id)
            #expect(fs.inodes.lookupCount(id) == 3)
            fs.forget(context, node: id, count: 3)
            #expect(try fs.lookup(fuseRootID, "file").nodeID != id)
        }
    }

    @Test("a hostile state: paths out of the share or through symlinks, taken ids, bad counts and flags are refused")
    func hostileState() throws {
        let tree = TemporaryTree()
        tree.mkdir("dir")
        tree.write("dir/file", "inside")
        tree.symlink("/etc", "escape")
        let good = state(path: Array("dir/file".utf8))
        try makeMigratingFileSystem(tree, MigrationOptions()).load(good)
        let refused: [(String, [UInt8])] = [
            ("..", state(path: Array("../etc/passwd".utf8))),
            ("dot", state(path: Array("dir/./file".utf8))),
            ("absolute", state(path: Array("/etc/passwd".utf8))),
            ("symlink", state(path: Array("escape/passwd".utf8))),
            ("empty", state(path: [])),
            ("NUL", state(path: Array("dir/fi".utf8) + [0] + Array("le".utf8))),
            ("root id", state(id: 1, path: Array("dir/file".utf8))),
            ("id 0", state(id: 0, path: Array("dir/file".utf8))),
            ("id of 2^48", state(id: 1 << 48 | 3, path: Array("dir/file".utf8))),
            ("handle of 2^48", state(path: Array("dir/file".utf8), handles: [(1 << 48, 1 << 7 | 3, O_RDONLY)])),
            ("no lookups", state(lookups: 0, path: Array("dir/file".utf8))),
            ("wrong type", state(type: 1, path: Array("dir/file".utf8))),
            ("bad type", state(type: 200, path: Array("dir/file".utf8))),
            ("handle of no node", state(path: Array("dir/file".utf8), handles: [(5, 99, O_RDONLY)])),
            ("handle 0", state(path: Array("dir/file".utf8), handles: [(0, 1 << 7 | 3, O_RDONLY)])),
            ("access mode 3", state(path: Array("dir/file".utf8), handles: [(5, 1 << 7 | 3, 3)])),
            ("two handles, one number", state(path: Array("dir/file".utf8), handles: [(5, 1 << 7 | 3, O_RDONLY), (5, 1 << 7 | 3, O_RDONLY)])),
            ("truncated", Array(good.dropLast(3))),
            ("huge count", [0] + [UInt8](repeating: 0, count: 8) + [UInt8](repeating: 0xff, count: 8)),
        ]
        for (what, bytes) in refused {
            let fs = try makeMigratingFileSystem(tree, MigrationOptions())
            #expect(throws: MigrationError.self, "\(what)") { try fs.load(bytes) }
        }
        // A handle opened for writing comes back without O_CREAT or O_TRUNC: the file keeps its bytes.
        let fs = try makeMigratingFileSystem(tree, MigrationOptions())
        try fs.load(state(path: Array("dir/file".utf8), handles: [(5, 1 << 7 | 3, O_WRONLY | O_TRUNC | O_CREAT)]))
        #expect(tree.read("dir/file") == "inside")
    }

    @Test("the FUSE server moves the agreed protocol with the session and refuses a foreign or damaged header")
    func serverHeader() throws {
        let tree = TemporaryTree()
        tree.write("file", "x")
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let fresh = FUSEServer(fileSystem: try makeMigratingFileSystem(tree, MigrationOptions()), logger: logger)
        let unstarted = try fresh.saveState()
        let destination = FUSEServer(fileSystem: try makeMigratingFileSystem(tree, MigrationOptions()), logger: logger)
        try destination.loadState(unstarted)
        #expect(!destination.isInitialized)
        #expect(throws: MigrationError.self) { try destination.loadState([1, 2, 3]) }
        #expect(throws: MigrationError.self) { try destination.loadState(Array(unstarted.dropLast())) }
        var wrongVersion = unstarted
        wrongVersion[4] = 9
        #expect(throws: MigrationError.self) { try destination.loadState(wrongVersion) }
        var badMinor = unstarted
        badMinor[8] = 99
        #expect(throws: MigrationError.self) { try destination.loadState(badMinor) }
    }
}
