// SPDX-License-Identifier: Apache-2.0

import FUSE
import Glibc
import Logging
import Passthrough
import Testing
import VFSSystem

@Suite("uid and gid translation")
struct IDMappingTests {
    func rules(_ texts: String...) throws -> [IDRule] { try texts.map { try IDRule(parsing: $0) } }

    @Test("every rule type parses, and prints back as given")
    func parsing() throws {
        for text in ["map:0:1000:1", "guest:5:6:7", "host:1000:0:1", "squash-guest:0:1000:4294967295",
                     "squash-host:2000:65534:100", "forbid-guest:1:999"] {
            #expect(try IDRule(parsing: text).description == text)
        }
        for bad in ["map:0:1000", "map:0:1000:0", "map:a:1:1", "wrap:0:0:1", "forbid-guest:1:2:3", "map:4294967295:0:2", ""] {
            #expect(throws: IDRule.Invalid.self) { try IDRule(parsing: bad) }
        }
    }

    @Test("map works both ways; an id no rule covers passes unchanged on either side, as in virtiofsd; no rules is the identity")
    func directions() throws {
        let map = try UIDMap(rules("map:0:1000:1", "map:1000:0:1"))
        #expect(map.toHost(GuestUID(0)) == .id(HostUID(1000)))
        #expect(map.toHost(GuestUID(1000)) == .id(HostUID(0)))
        #expect(map.toHost(GuestUID(5)) == .id(HostUID(5)))
        #expect(map.toGuest(HostUID(1000)) == GuestUID(0))
        #expect(map.toGuest(HostUID(0)) == GuestUID(1000))
        #expect(map.toGuest(HostUID(7)) == GuestUID(7))
        let identity = try UIDMap([])
        #expect(identity.isIdentity)
        #expect(identity.toHost(GuestUID(42)) == .id(HostUID(42)))
        #expect(identity.toGuest(HostUID(42)) == GuestUID(42))
    }

    @Test("guest, host, squash and forbid rules act in their one direction")
    func oneWayRules() throws {
        let map = try GIDMap(rules("guest:100:2100:10", "host:3000:50:5", "squash-guest:200:9000:100",
                                   "squash-host:4000:60:1000", "forbid-guest:0:100"))
        #expect(map.toHost(GuestGID(105)) == .id(HostGID(2105)))
        #expect(map.toGuest(HostGID(2105)) == GuestGID(2105))  // guest: only guest to host
        #expect(map.toGuest(HostGID(3004)) == GuestGID(54))
        #expect(map.toHost(GuestGID(350)) == .id(HostGID(350)))  // no guest-side rule for 350
        #expect(map.toHost(GuestGID(299)) == .id(HostGID(9000)))
        #expect(map.toGuest(HostGID(4999)) == GuestGID(60))
        #expect(map.toHost(GuestGID(0)) == .forbidden)
        #expect(map.toHost(GuestGID(99)) == .forbidden)
        #expect(map.toHost(GuestGID(100)) == .id(HostGID(2100)))
    }

    @Test("overlapping source ranges are refused with a message naming both rules")
    func overlaps() throws {
        let parsed = try rules("map:0:1000:10", "forbid-guest:5:10")
        do throws(IDRule.Invalid) {
            _ = try UIDMap(parsed)
            Issue.record("an overlap was accepted")
        } catch {
            #expect(error.description.contains("forbid-guest:5:10") && error.description.contains("map:0:1000:10"))
            #expect(error.description.contains("guest ids overlap"))
        }
        #expect(throws: IDRule.Invalid.self) { try UIDMap(rules("host:1000:0:1", "map:5:1000:1")) }
        // Adjacent ranges, and the same ids on different sides, are fine.
        _ = try UIDMap(rules("forbid-guest:0:1000", "map:1000:1000:1", "forbid-guest:1001:4294966294"))
        _ = try UIDMap(rules("guest:0:1000:1", "host:0:1000:1"))
    }

    func makeMapped(_ tree: TemporaryTree, uid: [String], gid: [String]) throws -> PassthroughFileSystem {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return try PassthroughFileSystem(
            options: PassthroughOptions(
                sharedDirectory: tree.path, uidMap: try UIDMap(uid.map { try IDRule(parsing: $0) }),
                gidMap: try GIDMap(gid.map { try IDRule(parsing: $0) })),
            logger: logger)
    }

    @Test("with map:0:1000:1, guest root creates host 1000:1000 files, and sees host 1000 as root and others as they are")
    func appliedByTheFileSystem() throws {
        let tree = TemporaryTree()
        chmod(tree.path, 0o777)
        tree.write("mine", "")
        chown("\(tree.path)/mine", 1000, 1000)
        tree.write("theirs", "")
        chown("\(tree.path)/theirs", 1234, 1234)
        let fs = try makeMapped(tree, uid: ["map:0:1000:1", "forbid-guest:5:1"], gid: ["map:0:1000:1"])
        let guestRoot = RequestContext(uid: 0, gid: 0)

        let created = try withName("new") { try fs.mkdir(guestRoot, parent: fuseRootID, name: $0, mode: 0o755, umask: 0) }
        var st = stat()
        stat("\(tree.path)/new", &st)
        #expect(st.st_uid == 1000 && st.st_gid == 1000)
        #expect(created.attributes.uid == 0 && created.attributes.gid == 0)

        let mine = try withName("mine") { try fs.lookup(guestRoot, parent: fuseRootID, name: $0) }
        #expect(mine.attributes.uid == 0 && mine.attributes.gid == 0)
        let theirs = try withName("theirs") { try fs.lookup(guestRoot, parent: fuseRootID, name: $0) }
        #expect(theirs.attributes.uid == 1234 && theirs.attributes.gid == 1234)
        #expect(try fs.getattr(guestRoot, node: theirs.nodeID, handle: nil).attributes.uid == 1234)

        // chown to guest root is chown to host 1000; to a forbidden guest id, EPERM.
        let back = try fs.setattr(guestRoot, node: theirs.nodeID, changes: AttributeChanges(uid: 0, gid: 0))
        stat("\(tree.path)/theirs", &st)
        #expect(st.st_uid == 1000 && st.st_gid == 1000 && back.attributes.uid == 0)
        #expect(throws: Errno.notPermitted) { try fs.setattr(guestRoot, node: theirs.nodeID, changes: AttributeChanges(uid: 5)) }
        // A request from a forbidden guest user that would create something: EPERM.
        #expect(throws: Errno.notPermitted) {
            try withName("nope") { try fs.mkdir(RequestContext(uid: 5, gid: 0), parent: fuseRootID, name: $0, mode: 0o755, umask: 0) }
        }
    }
}
