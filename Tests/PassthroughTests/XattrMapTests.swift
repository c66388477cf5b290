// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import FUSETestSupport
import Glibc
import Logging
import Passthrough
import Testing
import VFSSystem

/// `--xattrmap`, with the examples of virtiofsd's doc/xattr-mapping.md.
@Suite("Extended attribute name mapping")
struct XattrMapTests {
    func host(_ map: XattrMap, _ name: String) -> String? {
        if case .name(let mapped) = map.toHost(Array(name.utf8)) { return String(decoding: mapped, as: UTF8.self) }
        return nil
    }
    func refusal(_ map: XattrMap, _ name: String) -> Errno? {
        if case .refused(let error) = map.toHost(Array(name.utf8)) { return error }
        return nil
    }
    func guest(_ map: XattrMap, _ name: String) -> String? {
        map.toGuest(Array(name.utf8)).map { String(decoding: $0, as: UTF8.self) }
    }

    @Test("example 1: every name under user.virtiofs., written as two rules or as one map rule")
    func prefixAll() throws {
        for text in [":prefix:all::user.virtiofs.::bad:all:::", ":map::user.virtiofs.:"] {
            let map = try XattrMap(parsing: text)
            #expect(host(map, "trusted.a") == "user.virtiofs.trusted.a", "\(text)")
            #expect(host(map, "user.b") == "user.virtiofs.user.b")
            #expect(guest(map, "user.virtiofs.trusted.a") == "trusted.a")
            #expect(guest(map, "user.b") == nil, "a host name outside the prefix is hidden")
            #expect(guest(map, "security.selinux") == nil)
        }
    }

    @Test("example 2: trusted. under user.virtiofs., the rest through; '/' separators and new lines between rules")
    func prefixTrusted() throws {
        let long = """
            /prefix/all/trusted./user.virtiofs./
                        /bad/server//trusted./
                        /bad/client/user.virtiofs.//
                        /ok/all///
            """
        for text in [long, "/map/trusted./user.virtiofs./"] {
            let map = try XattrMap(parsing: text)
            #expect(host(map, "trusted.overlay.opaque") == "user.virtiofs.trusted.overlay.opaque", "\(text)")
            #expect(host(map, "user.mine") == "user.mine")
            #expect(refusal(map, "user.virtiofs.trusted.x") == .notPermitted, "the guest may not name the target itself")
            #expect(guest(map, "user.virtiofs.trusted.overlay.opaque") == "trusted.overlay.opaque")
            #expect(guest(map, "trusted.host-own") == nil, "the host's own trusted. names are hidden")
            #expect(guest(map, "user.mine") == "user.mine")
        }
    }

    @Test("example 3: security. hidden both ways, the rest through")
    func hideSecurity() throws {
        let map = try XattrMap(parsing: "/bad/all/security./security./\n/ok/all///")
        #expect(refusal(map, "security.selinux") == .notPermitted)
        #expect(guest(map, "security.selinux") == nil)
        #expect(host(map, "user.a") == "user.a" && guest(map, "user.a") == "user.a")
    }

    @Test("SELinux in a container: the guest's security. names kept under trusted.virtiofs., the host's own hidden")
    func selinuxInContainer() throws {
        let map = try XattrMap(parsing: ":prefix:all:security.:trusted.virtiofs.::bad:server::security.::ok:all:::")
        #expect(host(map, "security.selinux") == "trusted.virtiofs.security.selinux")
        #expect(guest(map, "trusted.virtiofs.security.selinux") == "security.selinux")
        #expect(guest(map, "security.selinux") == nil)
        #expect(host(map, "user.x") == "user.x" && guest(map, "user.x") == "user.x")
        #expect(map.listToGuest(Array("security.selinux\0trusted.virtiofs.security.selinux\0user.x\0".utf8))
                == Array("security.selinux\0user.x\0".utf8))
    }

    @Test("unsupported answers ENOTSUP; a name no rule covers is refused (EPERM) or hidden")
    func unmatched() throws {
        let map = try XattrMap(parsing: ":unsupported:client:system.:::ok:all:user.:user.:")
        #expect(refusal(map, "system.posix_acl_access") == .notSupported)
        #expect(refusal(map, "trusted.a") == .notPermitted)
        #expect(guest(map, "trusted.a") == nil)
    }

    @Test("malformed rule sets are refused", arguments: [
        "", "   ", ":prefix:all:a:", ":nonsense:all:::", ":ok:both:::", ":map::x::ok:all:::", ":map::a::map::b:", ":prefix",
    ])
    func malformed(text: String) {
        #expect(throws: XattrMap.Invalid.self) { try XattrMap(parsing: text) }
    }

    /// The file system on `tree` with xattrs on and every guest name under user.virtiofs.
    func mappedFileSystem(_ tree: TemporaryTree) throws -> PassthroughFileSystem {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return try PassthroughFileSystem(
            options: PassthroughOptions(sharedDirectory: tree.path, xattr: true, xattrMap: try XattrMap(parsing: ":map::user.virtiofs.:")),
            logger: logger)
    }

    /// A tree holding one file `f` with `contents`, the mapped file system on it, and the file's node.
    func mappedFile(_ contents: String) throws -> (tree: TemporaryTree, path: String, fs: PassthroughFileSystem, node: UInt64) {
        let tree = TemporaryTree()
        tree.write("f", contents)
        let fs = try mappedFileSystem(tree)
        return (tree, "\(tree.path)/f", fs, try fs.lookup(fuseRootID, "f").nodeID)
    }

    @Test("the file system applies the map to SETXATTR, GETXATTR, REMOVEXATTR and LISTXATTR")
    func appliedByTheFileSystem() throws {
        let tree = TemporaryTree()
        tree.write("f", "")
        let path = "\(tree.path)/f"
        #expect(setxattr(path, "user.host-own", "h", 1, 0) == 0)
        let fs = try mappedFileSystem(tree)
        let node = try fs.lookup(fuseRootID, "f").nodeID
        let value = Array("v".utf8)
        try withName("trusted.overlay.opaque") { name in
            try value.withUnsafeBytes { try fs.setxattr(RequestContext(), node: node, name: name, value: $0, flags: 0, killSGID: false) }
        }
        var buffer = [UInt8](repeating: 0, count: 64)
        #expect(getxattr(path, "user.virtiofs.trusted.overlay.opaque", &buffer, buffer.count) == 1, "the host keeps it under the prefix")
        #expect(getxattr(path, "trusted.overlay.opaque", &buffer, buffer.count) == -1)
        let got = try withName("trusted.overlay.opaque") { name in
            try buffer.withUnsafeMutableBytes { try fs.getxattr(RequestContext(), node: node, name: name, into: $0) }
        }
        #expect(got == 1 && buffer[0] == UInt8(ascii: "v"))
        // The list: the guest's name back, the host's own hidden; its size first, as the guest asks.
        let size = try fs.listxattr(RequestContext(), node: node, into: UnsafeMutableRawBufferPointer(start: nil, count: 0))
        #expect(size == "trusted.overlay.opaque\0".utf8.count)
        var list = [UInt8](repeating: 0, count: size)
        #expect(try list.withUnsafeMutableBytes { try fs.listxattr(RequestContext(), node: node, into: $0) } == size)
        #expect(list == Array("trusted.overlay.opaque\0".utf8))
        var small = [UInt8](repeating: 0, count: 3)
        #expect(throws: Errno.range) { try small.withUnsafeMutableBytes { try fs.listxattr(RequestContext(), node: node, into: $0) } }
        try withName("trusted.overlay.opaque") { try fs.removexattr(RequestContext(), node: node, name: $0) }
        #expect(getxattr(path, "user.virtiofs.trusted.overlay.opaque", &buffer, buffer.count) == -1 && errno == ENODATA)
        #expect(getxattr(path, "user.host-own", &buffer, buffer.count) == 1, "the host's own name is untouched")
    }

    @Test("a remapped security.capability goes where the host kernel would drop it: write, fallocate, copy, truncate, chown, O_TRUNC",
          arguments: ["write", "fallocate", "copy", "truncate", "chown", "open-trunc", "create-trunc"])
    func remappedCapabilityDropped(operation: String) throws {
        let (tree, path, fs, node) = try mappedFile("contents")
        tree.write("source", "abc")
        // The guest's capability, as the map stores it on the host, and another name of the guest's beside it.
        #expect(setxattr(path, "user.virtiofs.security.capability", "cap", 3, 0) == 0)
        #expect(setxattr(path, "user.virtiofs.user.other", "o", 1, 0) == 0)
        let handle = try fs.openAsGuest(node, flags: O_RDWR).handle
        switch operation {
        case "write": _ = try fs.writeText("x", node, handle: handle, at: 0)
        case "fallocate": try fs.fallocate(context, node: node, handle: handle, offset: 0, length: 4096, mode: 0)
        case "copy":
            let source = try fs.lookup(fuseRootID, "source").nodeID
            let from = try fs.open(context, node: source, flags: UInt32(O_RDONLY)).handle
            _ = try fs.copyFileRange(context, node: source, handle: from, offset: 0, toNode: node, toHandle: handle, toOffset: 0, length: 3, flags: 0)
        case "truncate": _ = try fs.setattr(context, node: node, changes: AttributeChanges(size: 1))
        case "chown": _ = try fs.setattr(context, node: node, changes: AttributeChanges(uid: 0))
        case "open-trunc": _ = try fs.open(context, node: node, flags: UInt32(O_WRONLY | O_TRUNC))
        default:
            _ = try withName("f") { try fs.create(context, parent: fuseRootID, name: $0, flags: UInt32(O_WRONLY | O_TRUNC), mode: 0o644, umask: 0) }
        }
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(getxattr(path, "user.virtiofs.security.capability", &buffer, buffer.count) == -1 && errno == ENODATA, "\(operation) kept it")
        #expect(getxattr(path, "user.virtiofs.user.other", &buffer, buffer.count) == 1, "\(operation) dropped another name")
        // A file without one: the same operation is no error.
        if operation == "write" { #expect(try fs.writeText("y", node, handle: handle, at: 1) == 1) }
        withExtendedLifetime(tree) {}
    }

    @Test("a read, and a chmod, leave a remapped security.capability, as the host kernel leaves its own")
    func remappedCapabilityKept() throws {
        let file = try mappedFile("contents")
        #expect(setxattr(file.path, "user.virtiofs.security.capability", "cap", 3, 0) == 0)
        let handle = try file.fs.openAsGuest(file.node, flags: O_RDWR).handle
        #expect(try file.fs.readText(file.node, handle: handle) == "contents")
        _ = try file.fs.setattr(context, node: file.node, changes: AttributeChanges(mode: 0o600))
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(getxattr(file.path, "user.virtiofs.security.capability", &buffer, buffer.count) == 3)
        withExtendedLifetime(file.tree) {}
    }

    @Test("a write goes through when the remapped name cannot be removed (EPERM): an append-only file")
    func remappedCapabilityNotRemovable() throws {
        let (tree, path, fs, node) = try mappedFile("contents")
        // Append-only on the host (FS_IOC_SETFLAGS, FS_APPEND_FL): removing any xattr is EPERM, appending works.
        // (A trusted. name is EPERM the same way for a daemon without CAP_SYS_ADMIN, its default.)
        let fd = Glibc.open(path, O_RDONLY)
        #expect(fd >= 0)
        var flags: CLong = 0x20
        let set = ioctl(fd, 0x4008_6602, &flags)
        defer {
            var none: CLong = 0
            _ = ioctl(fd, 0x4008_6602, &none)
            close(fd)
        }
        try #require(set == 0, "the host file system has no append-only flag")
        let handle = try fs.openAsGuest(node, flags: O_WRONLY | O_APPEND).handle
        #expect(try fs.writeText("+", node, handle: handle, at: 8) == 1)
        #expect(tree.read("f") == "contents+")
    }
}
