// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import VhostUser

/// The seed corpus: inputs that reach deep on their own, as a real guest and QEMU would send them, for the
/// fuzzer to mutate (`swift-virtiofsd-fuzz seeds DIR` writes them).
public enum Seeds {
    static func bytes<T>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }
    static func name(_ text: String) -> [UInt8] { Array(text.utf8) + [0] }

    /// One request in the FUSE targets' input format: fixed-up len, uid 0, a node and handle from earlier
    /// replies when `node`/`handle` ask for them.
    static func request(_ opcode: FUSEOpcode, node: Bool = false, handle: Bool = false, reply: Int = 4096, _ body: [UInt8] = []) -> [UInt8] {
        var header = fuse_in_header()
        header.len = UInt32(40 + body.count)
        header.opcode = opcode.rawValue
        // Node 0 and handle 0: with bits 5 and 6 of the shape, the ones the last replies gave.
        header.nodeid = node ? 0 : 1
        let frame = bytes(header) + body
        let shape: UInt8 = 0x10 | 0x80 | (node ? 0x20 : 0) | (handle ? 0x40 : 0) | (1 << 2)  // one writable buffer
        let size = UInt8(interestingSizes.firstIndex { $0 >= reply } ?? interestingSizes.count - 1)
        return bytes(UInt16(frame.count).littleEndian) + [shape, size] + frame
    }

    static func open(_ flags: Int32) -> [UInt8] { bytes(fuse_open_in(flags: UInt32(bitPattern: flags), open_flags: 0)) }

    /// Request sequences for the FUSE targets (the same for both: names exist in the passthrough's scratch
    /// tree: file, dir, dir/inner, link, outside, fifo).
    public static var fuse: [String: [UInt8]] {
        var read = fuse_read_in()
        read.size = 4096
        var write = fuse_write_in()
        write.size = 11
        var create = fuse_create_in()
        create.flags = UInt32(0o102)  // O_RDWR | O_CREAT
        create.mode = 0o100644
        var mkdir = fuse_mkdir_in()
        mkdir.mode = 0o755
        var mknod = fuse_mknod_in()
        mknod.mode = 0o10644  // a FIFO
        var setattr = fuse_setattr_in()
        setattr.valid = UInt32(FATTR_SIZE | FATTR_MODE)
        setattr.size = 3
        setattr.mode = 0o600
        var lock = fuse_lk_in()
        lock.owner = 3
        lock.lk = fuse_file_lock(start: 0, end: 99, type: 1, pid: 7)
        var rename = fuse_rename2_in()
        rename.newdir = 1
        var getxattr = fuse_getxattr_in()
        getxattr.size = 64
        var lseek = fuse_lseek_in()
        lseek.whence = 3  // SEEK_DATA
        var fallocate = fuse_fallocate_in()
        fallocate.length = 4096
        return [
            "lookup-read": request(.lookup, name("file")) + request(.open, node: true, open(0)) + request(.read, node: true, handle: true, bytes(read))
                + request(.getattr, node: true, bytes(fuse_getattr_in())) + request(.release, node: true, handle: true, bytes(fuse_release_in())),
            "create-write": request(.create, bytes(create) + name("new")) + request(.write, node: true, handle: true, bytes(write) + Array("hello world".utf8))
                + request(.setattr, node: true, bytes(setattr)) + request(.fsync, node: true, handle: true, bytes(fuse_fsync_in()))
                + request(.flush, node: true, handle: true, bytes(fuse_flush_in())) + request(.unlink, name("new")),
            "directories": request(.mkdir, bytes(mkdir) + name("d")) + request(.opendir, node: true, open(0))
                + request(.readdirplus, node: true, handle: true, bytes(read)) + request(.readdir, node: true, handle: true, bytes(read))
                + request(.releasedir, node: true, handle: true, bytes(fuse_release_in())) + request(.rmdir, name("d")),
            "links": request(.symlink, name("s") + name("file")) + request(.readlink, node: true) + request(.lookup, name("file"))
                + request(.link, bytes(fuse_link_in(oldnodeid: 2)) + name("hard")) + request(.rename2, bytes(rename) + name("hard") + name("moved")),
            "special": request(.mknod, bytes(mknod) + name("pipe")) + request(.open, node: true, open(0))
                + request(.lookup, name("fifo")) + request(.open, node: true, open(1)) + request(.syncfs, node: true, bytes(fuse_syncfs_in())),
            "locks": request(.lookup, name("file")) + request(.open, node: true, open(2)) + request(.setlk, node: true, handle: true, bytes(lock))
                + request(.getlk, node: true, handle: true, bytes(lock)) + request(.setlkw, node: true, handle: true, bytes(lock)),
            "xattr": request(.lookup, name("file")) + request(.setxattr, node: true, bytes(UInt32(3)) + bytes(UInt32(0)) + name("user.x") + [1, 2, 3])
                + request(.getxattr, node: true, bytes(getxattr) + name("user.x")) + request(.listxattr, node: true, bytes(getxattr))
                + request(.removexattr, node: true, name("user.x")),
            "data": request(.lookup, name("file")) + request(.open, node: true, open(2)) + request(.lseek, node: true, handle: true, bytes(lseek))
                + request(.fallocate, node: true, handle: true, bytes(fallocate)) + request(.statfs, node: true) + request(.access, node: true, bytes(fuse_access_in()))
                + request(.forget, node: true, bytes(fuse_forget_in(nlookup: 1))),
        ]
    }

    /// Ring images for the chain target: chains of one, several and indirect descriptors.
    public static var chain: [String: [UInt8]] {
        let size: UInt16 = 16
        let base: UInt64 = 0x10000
        let available = 16 * Int(size)
        func image(_ descriptors: [(UInt64, UInt32, UInt16, UInt16)], heads: [UInt16], extra: [(Int, [UInt8])] = []) -> [UInt8] {
            var memory = [UInt8](repeating: 0, count: 8192)
            for (i, d) in descriptors.enumerated() {
                memory.replaceSubrange(16 * i..<16 * i + 16, with: bytes(d.0.littleEndian) + bytes(d.1.littleEndian) + bytes(d.2.littleEndian) + bytes(d.3.littleEndian))
            }
            for (i, head) in heads.enumerated() {
                memory.replaceSubrange(available + 4 + 2 * i..<available + 6 + 2 * i, with: bytes(head.littleEndian))
            }
            for (offset, data) in extra { memory.replaceSubrange(offset..<offset + data.count, with: data) }
            return [4, 1] + bytes(UInt16(0)) + bytes(UInt16(heads.count).littleEndian) + memory
        }
        return [
            "pairs": image([(base + 4096, 56, 1, 1), (base + 5000, 128, 2, 0), (base + 4096, 40, 1, 3), (base + 6000, 16, 2, 0)], heads: [0, 2]),
            "indirect": image([(base + 4096, 32, 4, 0)], heads: [0], extra: [(4096, bytes((base + 5000).littleEndian) + bytes(UInt32(40).littleEndian) + bytes(UInt16(1).littleEndian) + bytes(UInt16(1).littleEndian)
                + bytes((base + 6000).littleEndian) + bytes(UInt32(64).littleEndian) + bytes(UInt16(2).littleEndian) + bytes(UInt16(0).littleEndian))]),
            "second-region": image([(0x30000, 100, 1, 1), (0x30000 + 200, 100, 2, 0)], heads: [0]),
        ]
    }

    /// Ring images for the packed target: a chain of two, an indirect one, and a ring that wraps.
    public static var packed: [String: [UInt8]] {
        let base: UInt64 = 0x10000
        let firstLap: UInt16 = 1 << 7
        func descriptor(_ address: UInt64, _ length: UInt32, _ id: UInt16, _ flags: UInt16) -> [UInt8] {
            bytes(address.littleEndian) + bytes(length.littleEndian) + bytes(id.littleEndian) + bytes(flags.littleEndian)
        }
        func image(size: UInt16, flags: UInt8, state: UInt32, _ descriptors: [(Int, [UInt8])], extra: [(Int, [UInt8])] = []) -> [UInt8] {
            var memory = [UInt8](repeating: 0, count: 8192)
            for (position, d) in descriptors { memory.replaceSubrange(16 * position..<16 * position + 16, with: d) }
            for (offset, data) in extra { memory.replaceSubrange(offset..<offset + data.count, with: data) }
            return [UInt8(size - 1), flags] + bytes(state.littleEndian) + memory
        }
        return [
            "pair": image(size: 16, flags: 1, state: 0x8000_8000, [
                (0, descriptor(base + 4096, 56, 3, firstLap | 1)), (1, descriptor(base + 5000, 128, 3, firstLap | 2)),
                (2, descriptor(base + 4096, 40, 4, firstLap)),
            ]),
            "indirect-logged": image(size: 10, flags: 3, state: 0x8000_8000, [(0, descriptor(base + 4096, 32, 7, firstLap | 4))],
                extra: [(4096, descriptor(base + 5000, 40, 0, 0) + descriptor(base + 6000, 64, 0, 2))]),
            // Positions 6 and 7 of the first lap, then 0 of the second (AVAIL clear, USED set), completed out of order.
            "wrap": image(size: 8, flags: 5, state: 0x8006_8006, [
                (6, descriptor(base + 4096, 56, 1, firstLap | 1)), (7, descriptor(base + 5000, 64, 1, firstLap | 2)),
                (0, descriptor(base + 4096, 56, 2, 1 << 15)),
            ]),
        ]
    }

    /// Message sequences for the vhost-user target: QEMU's set-up of a queue, then a stop and a reset.
    public static var vhostUser: [String: [UInt8]] {
        func message(_ request: VhostUserRequest, needReply: Bool = false, _ payload: [UInt8] = [], fds: [Int] = []) -> [UInt8] {
            var descriptors = UInt8(fds.count)
            for (i, fd) in fds.enumerated() { descriptors |= UInt8(fd & 3) << (2 + 2 * i) }
            return [UInt8(request.rawValue), needReply ? 1 : 0] + bytes(UInt16(payload.count).littleEndian) + [descriptors] + payload
        }
        var table = cvfs_vhost_memory()
        table.num_regions = 1
        table.regions.0 = cvfs_vhost_memory_region(guest_address: 0, size: 64 << 10, user_address: 0x7000_0000, mmap_offset: 0)
        let tablePayload = Array(bytes(table).prefix(8 + 32))
        let ring = cvfs_vhost_vring_addr(index: 1, flags: 0, descriptor: 0x7000_0000, used: 0x7000_0200, available: 0x7000_0100, log: 0)
        let memoryImage = [UInt8](repeating: 0, count: 4096)
        var packedImage = memoryImage
        // Packed descriptors (addr, len, id, flags with AVAIL set), a GETATTR request and room for its reply.
        let header = bytes(UInt32(56).littleEndian) + bytes(UInt32(3).littleEndian) + bytes(UInt64(1).littleEndian)
            + bytes(UInt64(1).littleEndian) + [UInt8](repeating: 0, count: 16)
        packedImage.replaceSubrange(0..<32, with: bytes(UInt64(0x800).littleEndian) + bytes(UInt32(56).littleEndian)
            + bytes(UInt16(5).littleEndian) + bytes(UInt16(0x81).littleEndian) + bytes(UInt64(0x900).littleEndian)
            + bytes(UInt32(256).littleEndian) + bytes(UInt16(5).littleEndian) + bytes(UInt16(0x82).littleEndian))
        packedImage.replaceSubrange(0x800..<0x800 + 56, with: header + [UInt8](repeating: 0, count: 16))
        func queueSetup(features: UInt64, size: UInt32, base: UInt32) -> [UInt8] {
            message(.getFeatures) + message(.getProtocolFeatures) + message(.setProtocolFeatures, bytes(UInt64(0x8009)))
            + message(.setOwner) + message(.setFeatures, bytes(features))
            + message(.setMemTable, needReply: true, tablePayload, fds: [0])
            + message(.setVringNum, bytes(cvfs_vhost_vring_state(index: 1, num: size)))
            + message(.setVringBase, bytes(cvfs_vhost_vring_state(index: 1, num: base)))
            + message(.setVringAddr, bytes(ring))
            + message(.setVringCall, bytes(UInt64(1)), fds: [1])
            + message(.setVringKick, bytes(UInt64(1)), fds: [0])
            + message(.setVringEnable, bytes(cvfs_vhost_vring_state(index: 1, num: 1)))
        }
        let setup = message(.getFeatures) + message(.getProtocolFeatures) + message(.setProtocolFeatures, bytes(UInt64(0x8009)))
            + message(.setOwner) + message(.setFeatures, bytes(UInt64(0x1_7000_0000)))
            + message(.setMemTable, needReply: true, tablePayload, fds: [0])
            + message(.setVringNum, bytes(cvfs_vhost_vring_state(index: 1, num: 16)))
            + message(.setVringBase, bytes(cvfs_vhost_vring_state(index: 1, num: 0)))
            + message(.setVringAddr, bytes(ring))
            + message(.setVringCall, bytes(UInt64(1)), fds: [1])
            + message(.setVringKick, bytes(UInt64(1)), fds: [0])
            + message(.setVringEnable, bytes(cvfs_vhost_vring_state(index: 1, num: 1)))
        return [
            "setup": memoryImage + setup,
            "setup-stop-reset": memoryImage + setup + message(.getVringBase, bytes(cvfs_vhost_vring_state(index: 1, num: 0)))
                + message(.resetDevice) + message(.getFeatures),
            // Dirty logging switched on while a queue runs, a request, then the state saved into the pipe (fd 1 of
            // the others: its write end) once the queue stops, and checked.
            "migration": memoryImage + setup
                + message(.setLogBase, needReply: true, bytes(UInt64(16).littleEndian) + bytes(UInt64(0)), fds: [0])
                + message(.setFeatures, needReply: true, bytes(UInt64(0x1_7400_0000)))
                + message(.setVringAddr, needReply: true, bytes(cvfs_vhost_vring_addr(
                    index: 1, flags: 1, descriptor: 0x7000_0000, used: 0x7000_0200, available: 0x7000_0100, log: 0x200)))
                + message(.getVringBase, bytes(cvfs_vhost_vring_state(index: 1, num: 0)))
                + message(.setDeviceStateFD, bytes(UInt64(0)), fds: [1]) + message(.checkDeviceState)
                + message(.setDeviceStateFD, bytes(UInt32(1)) + bytes(UInt32(0)), fds: [0]) + message(.checkDeviceState),
            // The same queue as a packed ring (VIRTIO_F_RING_PACKED, any size), with a GETATTR in positions 0
            // and 1 of the first lap; then stopped (GET_VRING_BASE gives both positions) and started again.
            "packed": packedImage + queueSetup(features: 0x5_7000_0000, size: 10, base: 0x8000_8000)
                + message(.getVringBase, bytes(cvfs_vhost_vring_state(index: 1, num: 0)))
                + message(.setVringBase, bytes(cvfs_vhost_vring_state(index: 1, num: 0x8002_8002)))
                + message(.setVringKick, bytes(UInt64(1)), fds: [0]),
            "memory-slots": memoryImage + message(.getFeatures) + message(.getMaxMemSlots)
                + message(.addMemReg, bytes(cvfs_vhost_single_memory_region(padding: 0, region: table.regions.0)), fds: [0])
                + message(.remMemReg, bytes(cvfs_vhost_single_memory_region(padding: 0, region: table.regions.0))),
        ]
    }

    /// Session states (the file system's part) naming the scratch tree's files by path and by a made-up handle,
    /// with open handles.
    public static var state: [String: [UInt8]] {
        func node(_ writer: inout StateWriter, id: UInt64, type: UInt8, path: String?) {
            writer.u64(id)
            writer.u64(2)
            writer.u8(type)
            writer.u64(0)
            writer.u64(0)
            writer.u8(path == nil ? 0 : 1)
            if let path { writer.data(Array(path.utf8)) }
        }
        var paths = StateWriter()
        paths.u8(0)
        paths.u64(0)
        paths.u64(5)
        node(&paths, id: 1 << 6 | 2, type: 0, path: "file")
        node(&paths, id: 2 << 6 | 5, type: 1, path: "dir")
        node(&paths, id: 3 << 6 | 9, type: 0, path: "dir/inner")
        node(&paths, id: 4 << 6 | 1, type: 2, path: "link")
        node(&paths, id: 5 << 6 | 3, type: 5, path: "fifo")
        paths.u64(3)
        for (handle, node, flags) in [(UInt64(17), UInt64(1 << 6 | 2), Int32(2)), (33, 2 << 6 | 5, 0), (49, 3 << 6 | 9, 0o2001)] {
            paths.u64(handle)
            paths.u64(node)
            paths.i32(flags)
        }
        var handles = StateWriter()
        handles.u8(1)
        handles.u64(0)
        handles.u64(1)
        handles.u64(1 << 6 | 2)
        handles.u64(1)
        handles.u8(0)
        handles.u64(0)
        handles.u64(0)
        handles.u8(1)
        handles.i32(1)
        handles.u64(0)
        handles.data([UInt8](repeating: 7, count: 8))
        handles.u64(0)
        return ["paths": paths.bytes, "handles": handles.bytes]
    }
}
