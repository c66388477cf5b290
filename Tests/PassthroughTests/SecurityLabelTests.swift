// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import FUSETestSupport
import Glibc
import Logging
import Passthrough
import Testing
import VFSSystem

@Suite("Security labels")
struct SecurityLabelTests {
    /// A CREATE frame for `name` carrying one security context as an extension (FUSE_SECURITY_CTX).
    func createWithLabel(_ name: String, label: String, value: String) -> [UInt8] {
        var input = fuse_create_in()
        input.flags = UInt32(O_CREAT | O_WRONLY)
        input.mode = 0o100644
        var args = bytes(input) + Array(name.utf8) + [0]
        while args.count % 8 != 0 { args.append(0) }
        var context = bytes(fuse_secctx(size: UInt32(value.utf8.count), padding: 0)) + Array(label.utf8) + [0] + Array(value.utf8)
        while (context.count + 8) % 8 != 0 { context.append(0) }
        let extensionBytes = bytes(fuse_secctx_header(size: UInt32(8 + context.count), nr_secctx: 1)) + context
        var request = frame(.create, unique: 5, node: fuseRootID, args + extensionBytes)
        request.withUnsafeMutableBytes { raw in
            var header = raw.loadUnaligned(as: fuse_in_header.self)
            header.uid = 0
            header.gid = 0
            header.total_extlen = UInt16(extensionBytes.count / 8)
            raw.storeBytes(of: header, as: fuse_in_header.self)
        }
        return request
    }

    /// A session on `tree` with --security-label (and `xattrMap`), before INIT.
    func labellingSession(_ tree: TemporaryTree, xattrMap: XattrMap? = nil) throws -> FUSESession<PassthroughFileSystem> {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let fs = try PassthroughFileSystem(
            options: PassthroughOptions(sharedDirectory: tree.path, securityLabel: true, xattrMap: xattrMap), logger: logger)
        return FUSESession(server: FUSEServer(fileSystem: fs, logger: logger))
    }

    @Test("a new file gets the security context the guest sent with CREATE")
    func createLabelled() throws {
        let tree = TemporaryTree()
        let session = try labellingSession(tree)
        let (_, initReply) = Frame(request: initFrame(minor: 38, flags: 0xffff_ffff | (1 << 32)), replySegments: [80]).run(session)
        #expect(payload(initReply, as: fuse_init_out.self).flags2 & 1 != 0)  // SECURITY_CTX agreed

        let (_, reply) = Frame(request: createWithLabel("labelled", label: "security.test", value: "system_u:object_r:test_t"), replySegments: [16, 128, 16]).run(session)
        #expect(outHeader(reply).error == 0)
        var value = [UInt8](repeating: 0, count: 64)
        let n = getxattr("\(tree.path)/labelled", "security.test", &value, 64)
        #expect(n > 0 && String(decoding: value[..<max(n, 0)], as: UTF8.self) == "system_u:object_r:test_t")
    }

    @Test("under --xattrmap the label goes where the map sends its name: SELinux in a container")
    func labelThroughTheMap() throws {
        let tree = TemporaryTree()
        let map = try XattrMap(parsing: ":prefix:all:security.:trusted.virtiofs.::bad:server::security.::ok:all:::")
        let session = try labellingSession(tree, xattrMap: map)
        _ = Frame(request: initFrame(minor: 38, flags: 0xffff_ffff | (1 << 32)), replySegments: [80]).run(session)

        let (_, reply) = Frame(request: createWithLabel("labelled", label: "security.test", value: "guest_label"), replySegments: [16, 128, 16]).run(session)
        #expect(outHeader(reply).error == 0)
        var value = [UInt8](repeating: 0, count: 64)
        let n = getxattr("\(tree.path)/labelled", "trusted.virtiofs.security.test", &value, 64)
        #expect(n > 0 && String(decoding: value[..<max(n, 0)], as: UTF8.self) == "guest_label")
        #expect(getxattr("\(tree.path)/labelled", "security.test", &value, 64) < 0, "the host's own security. name was written")
    }

    @Test("a guest that does not offer FUSE_SECURITY_CTX cannot mount with --security-label")
    func needsTheFlag() throws {
        let tree = TemporaryTree()
        let session = try labellingSession(tree)
        let (_, reply) = Frame(request: initFrame(minor: 38, flags: 0xffff_ffff), replySegments: [80]).run(session)
        #expect(outHeader(reply).error == -Errno.protocolError.rawValue)
    }
}
