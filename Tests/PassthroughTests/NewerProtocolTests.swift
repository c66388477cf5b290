// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import FUSETestSupport
import Glibc
import Logging
@testable import Passthrough
import Testing
import VFSSystem

/// What FUSE 7.38 (as of Linux 6.3) to 7.41 added that the server uses: STATX, CREATE_SUPP_GROUP and
/// DIRECT_IO_ALLOW_MMAP; and LSEEK left to the guest under a writeback cache.
@Suite("FUSE 7.39 to 7.41 with the passthrough file system")
struct NewerProtocolTests {
    func session(_ tree: TemporaryTree, writeback: Bool = false) throws -> (FUSESession<PassthroughFileSystem>, PassthroughFileSystem, fuse_init_out) {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let fs = try PassthroughFileSystem(options: PassthroughOptions(sharedDirectory: tree.path, writeback: writeback), logger: logger)
        let session = FUSESession(server: FUSEServer(fileSystem: fs, logger: logger))
        // What a 6.12 guest offers: every flag up to bit 40.
        let (_, reply) = Frame(request: initFrame(minor: 41, flags: (1 << 41) - 1), replySegments: [80]).run(session)
        return (session, fs, payload(reply, as: fuse_init_out.self))
    }

    @Test("a 6.12 guest agrees 7.41, DIRECT_IO_ALLOW_MMAP and (as root) CREATE_SUPP_GROUP")
    func agreed() throws {
        let (_, _, out) = try session(TemporaryTree())
        #expect(out.minor == 41)
        #expect(out.flags2 & (1 << 4) != 0)  // DIRECT_IO_ALLOW_MMAP (bit 36)
        #expect(out.flags2 & (1 << 2) != 0)  // CREATE_SUPP_GROUP (bit 34)
        #expect(out.flags2 & (1 << 8) == 0)  // ALLOW_IDMAP (bit 40): not asked for
    }

    @Test("STATX answers the host's birth time with the attributes GETATTR would give")
    func statx() throws {
        let tree = TemporaryTree()
        tree.write("file", "0123456789")
        let (session, fs, _) = try session(tree)
        let node = try fs.lookup(fuseRootID, "file").nodeID
        var input = fuse_statx_in()
        input.sx_mask = 0xfff  // STATX_BASIC_STATS | STATX_BTIME, as the guest asks
        let (_, reply) = Frame(request: frame(.statx, node: node, uid: 0, gid: 0, bytes(input)), replySegments: [16, 288]).run(session)
        #expect(outHeader(reply).error == 0 && outHeader(reply).len == 16 + 288)
        let out = payload(reply, as: fuse_statx_out.self)

        var host = CVirtioFS.statx()
        #expect(cvfs_statx(CVFS_AT_FDCWD, "\(tree.path)/file", 0, 0xfff, &host) == 0)
        #expect(host.stx_mask & 0x800 != 0, "the test's file system records birth times")
        #expect(out.stat.mask == host.stx_mask & 0xfff)
        #expect(out.stat.btime.tv_sec == host.stx_btime.tv_sec && out.stat.btime.tv_nsec == host.stx_btime.tv_nsec)
        #expect(out.stat.mtime.tv_sec == host.stx_mtime.tv_sec && out.stat.mtime.tv_nsec == host.stx_mtime.tv_nsec)
        #expect(out.stat.size == 10 && out.stat.mode == 0o100644 && out.stat.ino == host.stx_ino && out.stat.nlink == 1)
        #expect(out.attr_valid == 1)  // cache auto: GETATTR's timeout

        // A statx reply cut short is refused before anything is read.
        let (_, short) = Frame(request: frame(.statx, node: node, uid: 0, gid: 0, bytes(input)), replySegments: [16, 104]).run(session)
        #expect(outHeader(short).error == -EINVAL)
    }

    @Test("STATX with FUSE_GETATTR_FH reads the open handle's file; a number the guest holds no handle by reads the node's")
    func statxHandles() throws {
        let tree = TemporaryTree()
        tree.write("file", "0123456789")
        let (session, fs, _) = try session(tree)
        let node = try fs.lookup(fuseRootID, "file").nodeID
        let open = try fs.open(RequestContext(), node: node, flags: UInt32(O_RDWR))
        var host = CVirtioFS.statx()
        #expect(cvfs_statx(CVFS_AT_FDCWD, "\(tree.path)/file", 0, 0xfff, &host) == 0)
        for fh in [open.handle, 0xdead_beef, UInt64.max, 0, open.handle + 1] {
            var input = fuse_statx_in()
            input.sx_mask = 0xfff
            input.getattr_flags = UInt32(FUSE_GETATTR_FH)
            input.fh = fh
            let (_, reply) = Frame(request: frame(.statx, node: node, uid: 0, gid: 0, bytes(input)), replySegments: [16, 288]).run(session)
            #expect(outHeader(reply).error == 0, "fh \(fh)")
            let out = payload(reply, as: fuse_statx_out.self)
            #expect(out.stat.ino == host.stx_ino && out.stat.size == 10 && out.stat.btime.tv_nsec == host.stx_btime.tv_nsec, "fh \(fh)")
        }
    }

    /// MKDIR or CREATE of `name` in `parent` as uid and gid 1000, with `group` as a FUSE_EXT_GROUPS extension.
    func creating(_ opcode: FUSEOpcode, _ parent: UInt64, _ name: String, mode: UInt32, group: UInt32?) -> [UInt8] {
        var args: [UInt8]
        if opcode == .mkdir {
            args = bytes(fuse_mkdir_in(mode: mode, umask: 0))
        } else {
            var input = fuse_create_in()
            input.flags = UInt32(O_WRONLY | O_CREAT | O_EXCL)
            input.mode = mode
            args = bytes(input)
        }
        args += FUSETestSupport.name(name)
        while args.count % 8 != 0 { args.append(0) }
        var extensions: [UInt8] = []
        if let group {
            extensions = bytes(fuse_ext_header(size: 16, type: UInt32(FUSE_EXT_GROUPS))) + bytes(UInt32(1)) + bytes(group)
        }
        var request = frame(opcode, unique: 5, node: parent, uid: 1000, gid: 1000, args + extensions)
        request.withUnsafeMutableBytes { raw in
            var header = raw.loadUnaligned(as: fuse_in_header.self)
            header.total_extlen = UInt16(extensions.count / 8)
            raw.storeBytes(of: header, as: fuse_in_header.self)
        }
        return request
    }

    @Test("CREATE_SUPP_GROUP: a caller in the parent's group only as a supplementary group creates there, and keeps a setgid bit", .enabled(if: geteuid() == 0, "needs root"))
    func supplementaryGroup() throws {
        let tree = TemporaryTree()
        tree.mkdir("g")
        #expect(chown("\(tree.path)/g", 0, 4242) == 0 && chmod("\(tree.path)/g", 0o2770) == 0)
        let (session, fs, _) = try session(tree)
        let parent = try fs.lookup(fuseRootID, "g").nodeID

        let (_, refused) = Frame(request: creating(.mkdir, parent, "without", mode: 0o755, group: nil), replySegments: [16, 128]).run(session)
        #expect(outHeader(refused).error == -EACCES)

        let (_, made) = Frame(request: creating(.mkdir, parent, "with", mode: 0o755, group: 4242), replySegments: [16, 128]).run(session)
        #expect(outHeader(made).error == 0)
        var st = Glibc.stat()
        #expect(lstat("\(tree.path)/g/with", &st) == 0 && st.st_uid == 1000 && st.st_gid == 4242)

        let (_, created) = Frame(request: creating(.create, parent, "setgid", mode: 0o102755, group: 4242), replySegments: [16, 128, 16]).run(session)
        #expect(outHeader(created).error == 0)
        #expect(lstat("\(tree.path)/g/setgid", &st) == 0 && st.st_mode & 0o7777 == 0o2755, "the setgid bit is kept, as locally")

        // The group was the request's only: this thread (which served them) has none left.
        #expect(getgroups(0, nil) == 0)
        // A group the caller is not given is not taken from another request.
        let (_, again) = Frame(request: creating(.mkdir, parent, "again", mode: 0o755, group: nil), replySegments: [16, 128]).run(session)
        #expect(outHeader(again).error == -EACCES)
    }

    @Test("killpriv-v2: on unless told otherwise, except on NFS and SMB; what the command line says wins")
    func killprivV2Default() throws {
        let ext4: UInt64 = 0xEF53, nfs: UInt64 = 0x6969, cifs: UInt64 = 0xFF53_4D42, smb2: UInt64 = 0xFE53_4D42
        #expect(PassthroughFileSystem.offersKillprivV2(nil, fileSystemType: ext4))
        #expect(PassthroughFileSystem.offersKillprivV2(nil, fileSystemType: nil))
        for network in [nfs, cifs, smb2] {
            #expect(!PassthroughFileSystem.offersKillprivV2(nil, fileSystemType: network))
            #expect(PassthroughFileSystem.offersKillprivV2(true, fileSystemType: network))
        }
        #expect(!PassthroughFileSystem.offersKillprivV2(false, fileSystemType: ext4))
        // On this tree (a local file system) the daemon's default offers it at INIT.
        let tree = TemporaryTree()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let byDefault = try PassthroughFileSystem(options: PassthroughOptions(sharedDirectory: tree.path, killprivV2: nil), logger: logger)
        let request = InitRequest(major: 7, minor: 41, maxReadahead: 0, flags: [.handleKillprivV2])
        #expect(try byDefault.initialize(request).contains(.handleKillprivV2))
        let off = try PassthroughFileSystem(options: PassthroughOptions(sharedDirectory: tree.path, killprivV2: false), logger: logger)
        #expect(try !off.initialize(request).contains(.handleKillprivV2))
    }

    @Test("a WRITE with KILL_SUIDGID clears set-group-id without group execution only for a writer outside the file's group",
          arguments: [UInt32(1000), 0])
    func killSetGroupID(writerGroup: UInt32) throws {
        let tree = TemporaryTree()
        tree.write("file", "0123456789")
        #expect(chmod("\(tree.path)/file", 0o6545) == 0)
        // File capabilities (struct vfs_cap_data, revision 2: cap_net_raw permitted and effective) go too.
        let capability: [UInt32] = [0x0200_0001, 1 << 13, 0, 0, 0]
        #expect(capability.withUnsafeBytes { setxattr("\(tree.path)/file", "security.capability", $0.baseAddress, $0.count, 0) } == 0)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let fs = try PassthroughFileSystem(options: PassthroughOptions(sharedDirectory: tree.path, killprivV2: true), logger: logger)
        let node = try fs.lookup(fuseRootID, "file").nodeID
        let opened = try fs.open(context, node: node, flags: UInt32(O_RDWR))
        var bytes = Array("x".utf8)
        _ = try bytes.withUnsafeMutableBytes { p in
            try [iovec(iov_base: p.baseAddress, iov_len: p.count)].withUnsafeBufferPointer { v in
                try fs.write(RequestContext(uid: 1000, gid: writerGroup), node: node, handle: opened.handle, offset: 0,
                             from: WriteSource(buffers: v, length: p.count), killSetIDBits: true, fromPageCache: false)
            }
        }
        var st = Glibc.stat()
        #expect(lstat("\(tree.path)/file", &st) == 0)
        // Set-user-id always goes; set-group-id (here without group execution) only for a writer outside group 0.
        #expect(UInt32(st.st_mode) & 0o7777 == (writerGroup == 0 ? 0o2545 : 0o0545))
        // The host's own write removes them, whoever writes (the daemon's CAP_FSETID keeps only set-id bits).
        #expect(getxattr("\(tree.path)/file", "security.capability", nil, 0) == -1 && errno == ENODATA)
    }

    @Test("an O_TRUNC OPEN (ATOMIC_O_TRUNC) by a non-root caller drops the set-id bits, which the guest leaves to it",
          arguments: [(UInt32(1000), UInt32(0o0755)), (0, 0o6755)])
    func truncatingOpen(caller: UInt32, expected: UInt32) throws {
        let tree = TemporaryTree()
        tree.write("file", "0123456789")
        #expect(chmod("\(tree.path)/file", 0o6755) == 0)
        let fs = try makeFileSystem(tree)
        let node = try fs.lookup(fuseRootID, "file").nodeID
        _ = try fs.open(RequestContext(uid: caller, gid: caller), node: node, flags: UInt32(O_WRONLY | O_TRUNC))
        var st = Glibc.stat()
        #expect(lstat("\(tree.path)/file", &st) == 0 && st.st_size == 0)
        #expect(UInt32(st.st_mode) & 0o7777 == expected)
    }

    @Test("with file handles, a new file that reuses a held node's inode number gets a node of its own, not the stale one")
    func reusedInodeNumber() throws {
        let tree = TemporaryTree()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let fs = try PassthroughFileSystem(options: PassthroughOptions(sharedDirectory: tree.path, inodeFileHandles: .prefer), logger: logger)
        var reused = 0
        for i in 0..<20 {
            tree.write("old\(i)", "old")
            let old = try fs.lookup(fuseRootID, "old\(i)")
            // The host frees the inode (no descriptor holds it) while the guest still holds the node.
            #expect(unlink("\(tree.path)/old\(i)") == 0)
            tree.write("new\(i)", "new")
            let new = try fs.lookup(fuseRootID, "new\(i)")
            if new.attributes.inode == old.attributes.inode { reused += 1 }
            #expect(new.nodeID != old.nodeID, "round \(i): the new file was given the old file's node")
            #expect(throws: Never.self) { try fs.getattr(context, node: new.nodeID, handle: nil) }
        }
        // ext4 hands a freed inode number out again at once: the case above did happen.
        #expect(reused > 0, "no inode number was reused; the test did not test")
    }

    @Test("a malformed FUSE_EXT_GROUPS extension grants no group: the request runs as without it",
          arguments: [(UInt32(16), UInt32(2)), (16, 0), (8, 1), (24, 1), (0x7fff_fff0, 1)])
    func malformedSupplementaryGroup(size: UInt32, count: UInt32) throws {
        let tree = TemporaryTree()
        tree.mkdir("g")
        #expect(chown("\(tree.path)/g", 0, 4242) == 0 && chmod("\(tree.path)/g", 0o2770) == 0)
        let (session, fs, _) = try session(tree)
        let parent = try fs.lookup(fuseRootID, "g").nodeID
        var request = creating(.mkdir, parent, "d", mode: 0o755, group: 4242)
        // The extension's header (size) and fuse_supp_groups (nr_groups) are the last 16 bytes.
        let at = request.count - 16
        request.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: size, toByteOffset: at, as: UInt32.self)
            raw.storeBytes(of: count, toByteOffset: at + 8, as: UInt32.self)
        }
        let (_, reply) = Frame(request: request, replySegments: [16, 128]).run(session)
        #expect(outHeader(reply).error == -EACCES)
        #expect(getgroups(0, nil) == 0)
    }

    @Test("LSEEK under a writeback cache is ENOSYS: the guest's dirty pages are not on the host yet")
    func lseekWithWriteback() throws {
        let tree = TemporaryTree()
        tree.write("file", "0123456789")
        let (_, fs, _) = try session(tree, writeback: true)
        let node = try fs.lookup(fuseRootID, "file").nodeID
        let opened = try fs.open(context, node: node, flags: UInt32(O_RDWR))
        #expect(throws: Errno.noFunction) { try fs.lseek(context, node: node, handle: opened.handle, offset: 0, whence: 3) }
    }
}
