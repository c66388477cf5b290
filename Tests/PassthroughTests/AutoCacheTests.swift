// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import Glibc
import Passthrough
import Testing
import VFSSystem

private let short = Timeout(seconds: 1)
private let long = Timeout(seconds: 10)

extension PassthroughFileSystem {
    func create(_ parent: UInt64, _ name: String, flags: Int32 = O_RDWR | O_CREAT) throws -> (Entry, OpenReply) {
        try withName(name) { try create(context, parent: parent, name: $0, flags: UInt32(bitPattern: flags), mode: 0o644, umask: 0) }
    }

    func mkdir(_ parent: UInt64, _ name: String) throws -> Entry {
        try withName(name) { try mkdir(context, parent: parent, name: $0, mode: 0o755, umask: 0) }
    }

    func attributeTimeout(_ node: UInt64) throws -> Timeout { try getattr(context, node: node, handle: nil).timeout }

    /// Forgets `node` as often as the guest looked it up.
    func forgetAll(_ node: UInt64) { forget(context, node: node, count: inodes.lookupCount(node) ?? 0) }
}

/// A file's ctime moves on for a host process: a chmod to the mode it has.
private func touchChangeTime(_ path: String) {
    var st = Glibc.stat()
    precondition(lstat(path, &st) == 0 && chmod(path, st.st_mode & 0o7777) == 0)
}

@Suite("--cache auto: timeouts that follow who changed what, and close-to-open with sizes")
struct AutoCacheTests {
    @Test("a node another party changed in the last minute gets 1 s, one it left alone for longer 10 s")
    func othersChangesShortenTimeouts() throws {
        let tree = TemporaryTree()
        tree.mkdir("d")
        tree.write("d/f", "host")
        let fs = try makeFileSystem(tree, cache: .auto)
        let d = try fs.lookup(fuseRootID, "d")
        let f = try fs.lookup(d.nodeID, "f")
        // Just made by the host: its changes are recent and not the daemon's.
        #expect(f.attributeTimeout == short && f.entryTimeout == short)
        #expect(d.attributeTimeout == short)
        // Two minutes later nothing has changed: the long timeout.
        fs.skewClock(bySeconds: 120)
        #expect(try fs.attributeTimeout(f.nodeID) == long)
        #expect(try fs.lookup(d.nodeID, "f").entryTimeout == long)
        #expect(try fs.lookup(d.nodeID, "missing").entryTimeout == long)
        fs.skewClock(bySeconds: -120)
        // The host changes the file again: short at once, for its attributes and its name; the directory, whose
        // last change was the host's two "minutes" ago, is recent again in real time.
        touchChangeTime("\(tree.path)/d/f")
        #expect(try fs.attributeTimeout(f.nodeID) == short)
        #expect(try fs.lookup(d.nodeID, "f").entryTimeout == short)
    }

    @Test("what the guest creates and changes through the daemon keeps 10 s, names in its directories too")
    func ownChangesKeepLongTimeouts() throws {
        let tree = TemporaryTree()
        let fs = try makeFileSystem(tree, cache: .auto)
        let d = try fs.mkdir(fuseRootID, "d")
        #expect(d.attributeTimeout == long)
        let (f, opened) = try fs.create(d.nodeID, "f")
        #expect(f.attributeTimeout == long && f.entryTimeout == long)
        #expect(try fs.writeText("guest", f.nodeID, handle: opened.handle, at: 0) == 5)
        try fs.release(context, node: f.nodeID, handle: opened.handle, releaseFlags: 0)
        #expect(try fs.attributeTimeout(f.nodeID) == long)
        #expect(try fs.attributeTimeout(d.nodeID) == long)
        _ = try fs.setattr(context, node: f.nodeID, changes: AttributeChanges(mode: 0o600))
        #expect(try fs.attributeTimeout(f.nodeID) == long)
        // A rename moves the file's ctime on: still the guest's own change.
        try withName("f") { from in
            try withName("g") { to in try fs.rename(context, parent: d.nodeID, name: from, newParent: d.nodeID, newName: to, flags: 0) }
        }
        let g = try fs.lookup(d.nodeID, "g")
        #expect(g.nodeID == f.nodeID && g.attributeTimeout == long && g.entryTimeout == long)
        #expect(try fs.lookup(d.nodeID, "f").entryTimeout == long, "a negative entry in the guest's own directory")
        // A host process adds a name in the guest's directory: the directory's names are short from then on. (Not
        // in the same clock tick as the guest's last change: the host's kernel may stamp a ctime from a clock that
        // lags the daemon's by up to a tick, and a change that close to the daemon's own counts as its own.)
        usleep(20_000)
        tree.write("d/host", "h")
        #expect(try fs.attributeTimeout(d.nodeID) == short)
        #expect(try fs.lookup(d.nodeID, "g").entryTimeout == short)
        #expect(try fs.lookup(d.nodeID, "missing").entryTimeout == short)
        #expect(try fs.lookup(d.nodeID, "g").attributeTimeout == long, "the file itself is still the guest's alone")
    }

    @Test("after the guest forgets what it wrote (drop_caches) and looks again, it is still its own; the host's is not")
    func ownChangesOutliveForget() throws {
        let tree = TemporaryTree()
        tree.write("host", "h")
        let fs = try makeFileSystem(tree, cache: .auto)
        let (mine, opened) = try fs.create(fuseRootID, "mine")
        try fs.release(context, node: mine.nodeID, handle: opened.handle, releaseFlags: 0)
        let host = try fs.lookup(fuseRootID, "host")
        fs.forgetAll(mine.nodeID)
        fs.forgetAll(host.nodeID)
        #expect(fs.inodes.count == 0)
        #expect(try fs.lookup(fuseRootID, "mine").attributeTimeout == long)
        #expect(try fs.lookup(fuseRootID, "host").attributeTimeout == short)
    }

    @Test("OPEN answers ESTALE once per guest thread when the guest's attributes of the file are stale: the host changed it or removed its name")
    func staleOpenRefusedOnce() throws {
        let tree = TemporaryTree()
        tree.write("f", "one")
        let fs = try makeFileSystem(tree, cache: .auto)
        let f = try fs.lookup(fuseRootID, "f").nodeID
        // As told: opens.
        let first = try fs.open(context, node: f, flags: UInt32(O_RDONLY))
        try fs.release(context, node: f, handle: first.handle, releaseFlags: 0)
        // The host appends: the guest would read its old size.
        let fd = Glibc.open("\(tree.path)/f", O_WRONLY | O_APPEND)
        #expect(write(fd, "two", 3) == 3)
        close(fd)
        #expect(throws: Errno.stale) { try fs.open(context, node: f, flags: UInt32(O_RDONLY)) }
        // Another guest thread is refused too; the first thread's second try (as an open that walks no path
        // makes it) goes through, once; after a LOOKUP, every open does.
        let other = RequestContext(uid: 0, gid: 0, pid: 4242)
        #expect(throws: Errno.stale) { try fs.open(other, node: f, flags: UInt32(O_RDONLY)) }
        let second = try fs.open(context, node: f, flags: UInt32(O_RDONLY))
        #expect(try fs.readText(f, handle: second.handle) == "onetwo")
        try fs.release(context, node: f, handle: second.handle, releaseFlags: 0)
        #expect(throws: Errno.stale) { try fs.open(context, node: f, flags: UInt32(O_RDONLY)) }
        let looked = try fs.lookup(fuseRootID, "f")
        #expect(looked.attributes.size == 6)
        let third = try fs.open(context, node: f, flags: UInt32(O_RDONLY))
        try fs.release(context, node: f, handle: third.handle, releaseFlags: 0)
        // The guest's own writes, truncation and renames are not another party's: no refusal.
        let writer = try fs.open(context, node: f, flags: UInt32(O_RDWR))
        _ = try fs.writeText("ONE", f, handle: writer.handle, at: 0)
        try fs.release(context, node: f, handle: writer.handle, releaseFlags: 0)
        let afterWrite = try fs.open(context, node: f, flags: UInt32(O_RDONLY))
        try fs.release(context, node: f, handle: afterWrite.handle, releaseFlags: 0)
        // A truncating open truncates: it is not refused, whatever the host did.
        touchChangeTime("\(tree.path)/f")
        let truncating = try fs.open(context, node: f, flags: UInt32(O_WRONLY | O_TRUNC))
        try fs.release(context, node: f, handle: truncating.handle, releaseFlags: 0)
        #expect(tree.read("f") == "")
        // The host removes the name the guest holds: the guest must walk its path again and find it gone.
        _ = try fs.getattr(context, node: f, handle: nil)
        #expect(unlink("\(tree.path)/f") == 0)
        #expect(throws: Errno.stale) { try fs.open(context, node: f, flags: UInt32(O_RDONLY)) }
    }

    @Test("never, metadata and always keep their fixed timeouts and never refuse an OPEN",
          arguments: [(CachePolicy.never, Timeout.zero), (.metadata, Timeout(seconds: 86400)), (.always, Timeout(seconds: 86400))])
    func fixedModes(cache: CachePolicy, timeout: Timeout) throws {
        let tree = TemporaryTree()
        tree.write("f", "one")
        let fs = try makeFileSystem(tree, cache: cache)
        let f = try fs.lookup(fuseRootID, "f")
        #expect(f.attributeTimeout == timeout && f.entryTimeout == timeout)
        touchChangeTime("\(tree.path)/f")
        #expect(try fs.attributeTimeout(f.nodeID) == timeout)
        let opened = try fs.open(context, node: f.nodeID, flags: UInt32(O_RDONLY))
        try fs.release(context, node: f.nodeID, handle: opened.handle, releaseFlags: 0)
    }
}
