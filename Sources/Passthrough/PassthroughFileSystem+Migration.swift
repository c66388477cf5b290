// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import FUSE
import Glibc
import VFSSystem

/// How the guest's session moves in a live migration (`--migration-*`, as virtiofsd's).
public struct MigrationOptions: Sendable {
    /// How the destination finds each file the guest holds again.
    public enum Mode: String, Sendable {
        /// By its path under the shared directory, as the source sees it at switch-over (`find-paths`).
        case findPaths = "find-paths"
        /// By its kernel file handle: needs the same file system on both sides, and CAP_DAC_READ_SEARCH on the
        /// destination (`file-handles`).
        case fileHandles = "file-handles"
    }

    /// What a file that cannot be found again does (`--migration-on-error`).
    public enum OnError: String, Sendable {
        /// The migration fails; the guest goes on on the source.
        case abort
        /// The migration goes on; the guest's requests on that file fail with EIO.
        case guestError = "guest-error"
    }

    public var mode: Mode
    public var onError: OnError
    /// The destination checks that each file it finds is the source's (device and inode number): only where
    /// both sides see the same file system (`--migration-verify-handles`).
    public var verifyHandles: Bool
    /// The source opens each path it found and checks it names the node's file (`--migration-confirm-paths`),
    /// against third parties renaming files meanwhile.
    public var confirmPaths: Bool

    public init(mode: Mode = .findPaths, onError: OnError = .abort, verifyHandles: Bool = false, confirmPaths: Bool = false) {
        self.mode = mode
        self.onError = onError
        self.verifyHandles = verifyHandles
        self.confirmPaths = confirmPaths
    }
}

/// The session's state, saved by the source and taken up by the destination:
///
///     u8 mode (0 paths, 1 file handles), u64 root mount id
///     u64 count, then per node: u64 id, u64 lookups, u8 type, u64 device, u64 inode, u8 found (1) or lost (0),
///         and when found: the path (bytes, relative to the shared directory) or the handle (i32 type,
///         u64 mount id, bytes)
///     u64 count, then per open handle: u64 handle, u64 node id, i32 open flags
///
/// Nothing in it is trusted on the way in: ids must be new and not 0 or the root's, paths are walked a name
/// at a time without following a symlink or "..", open flags are cut down to the ones an OPEN could give.
extension PassthroughFileSystem: MigratableFileSystem {
    static let fileTypes: [FileType] = [.regular, .directory, .symbolicLink, .characterDevice, .blockDevice, .fifo, .socket]
    /// The smallest records (a lost node, a handle), for checking counts against the bytes left.
    static var nodeRecordMinimum: Int { 34 }
    static var handleRecordMinimum: Int { 20 }
    /// What `/proc/self/fd` adds to the path of a file with no name left.
    static let deletedSuffix = Array(" (deleted)".utf8)

    public func saveState(into writer: inout StateWriter) throws(MigrationError) {
        let rootPath = procSelf.path(of: inodes.root.fd())
        let rootMount = inodes.root.key.mountID
        writer.u8(options.migration.mode == .fileHandles ? 1 : 0)
        writer.u64(rootMount)
        let nodes = inodes.snapshot()
        writer.u64(UInt64(nodes.count))
        let (saved, handleCount) = try openHandles()
        // The files the guest has open: a node without one whose file was deleted (a name the guest looked up,
        // then replaced by a rename) goes as lost whatever --migration-on-error says, as nothing can reach it
        // again but a FORGET.
        let open = Set(saved.map(\.node))
        var lost = 0
        for (node, lookups) in nodes {
            writer.u64(node.nodeID)
            writer.u64(lookups)
            writer.u8(UInt8(Self.fileTypes.firstIndex(of: node.fileType) ?? 0xff))
            writer.u64(node.key.device)
            writer.u64(node.key.inode)
            let location: Result<Void, MigrationError>
            switch options.migration.mode {
            case .findPaths:
                location = relativePath(of: node, rootPath: rootPath).map { path in
                    writer.u8(1)
                    writer.data(path)
                }
            case .fileHandles:
                location = fileHandle(of: node, rootMount: rootMount, open: open.contains(node.nodeID)).map { handle in
                    writer.u8(1)
                    writer.i32(handle.handleType)
                    writer.u64(node.key.mountID)
                    writer.data(handle.bytes)
                }
            }
            switch location {
            case .success: break
            case .failure(let error):
                let unreachable = error.deleted && !open.contains(node.nodeID)
                guard options.migration.onError == .guestError || unreachable else {
                    throw MigrationError("node \(node.nodeID): \(error)")
                }
                logger.log(level: unreachable ? .debug : .warning,
                    "migration: node \(node.nodeID) goes as lost (its requests fail with EIO on the destination): \(error)")
                lost += 1
                writer.u8(0)
            }
        }
        writer.u64(UInt64(saved.count))
        for (handle, node, flags) in saved {
            writer.u64(handle)
            writer.u64(node)
            writer.i32(flags)
        }
        logger.info("migration: saved \(nodes.count) nodes (\(lost) lost) and \(saved.count) of \(handleCount) handles, \(options.migration.mode.rawValue)")
    }

    /// Every open handle the state carries, with its node and open flags; and how many handles there are.
    func openHandles() throws(MigrationError) -> (saved: [(handle: UInt64, node: UInt64, flags: Int32)], count: Int) {
        let handles = handles.snapshot()
        var saved: [(handle: UInt64, node: UInt64, flags: Int32)] = []
        for (handle, data) in handles {
            let stat: FileStat
            let flags: CInt
            do throws(Errno) {
                stat = try data.withDescriptor { (fd) throws(Errno) in try unsafe fd.statx("") }
                flags = try data.withDescriptor { (fd) throws(Errno) in try fd.statusFlags() }
            } catch {
                throw MigrationError("handle \(handle): \(error)")
            }
            guard let node = inodes.find(key: InodeKey(stat)) else {
                guard options.migration.onError == .guestError else {
                    throw MigrationError("handle \(handle): its file is no node the guest holds (an unlinked temporary file?)")
                }
                logger.warning("migration: handle \(handle) is not moved (its file is no node the guest holds)")
                continue
            }
            saved.append((handle, node.nodeID, flags))
        }
        return (saved, handles.count)
    }

    /// The node's path relative to the shared directory, from `/proc/self/fd` (the kernel's own name for the
    /// file, which follows renames); with `confirmPaths`, checked by opening it.
    func relativePath(of node: InodeData, rootPath: [UInt8]?) -> Result<[UInt8], MigrationError> {
        guard let rootPath else { return .failure(MigrationError("the shared directory's own path is unknown")) }
        let found: Result<[UInt8]?, Errno> = Result { () throws(Errno) -> [UInt8]? in
            try withPath(node) { (fd) throws(Errno) -> [UInt8]? in
                guard let path = procSelf.path(of: fd), try !hasNoName(node, fd, path: path) else { return nil }
                return path
            }
        }
        guard case .success(let path?) = found else {
            return .failure(MigrationError("its file has no name left under the shared directory", deleted: true))
        }
        let prefix = rootPath == [UInt8(ascii: "/")] ? rootPath : rootPath + [UInt8(ascii: "/")]
        guard path.count > prefix.count, path.starts(with: prefix) else {
            return .failure(MigrationError("its path is outside the shared directory"))
        }
        let relative = Array(path[prefix.count...])
        if options.migration.confirmPaths {
            let same: Bool
            do throws(Errno) {
                let fd = try open(relative: relative)
                same = try InodeKey(unsafe fd.borrowed.statx("")) == node.key
            } catch {
                same = false
            }
            guard same else { return .failure(MigrationError("its path no longer names its file")) }
        }
        return .success(relative)
    }

    /// Whether the node's file has no name left: no links and, for a directory, "PATH (deleted)" in
    /// `/proc/self/fd` as well (some file systems do not count a directory's links).
    func hasNoName(_ node: InodeData, _ fd: FileDescriptor, path: [UInt8]?) throws(Errno) -> Bool {
        guard try unsafe fd.statx("").linkCount == 0 else { return false }
        guard node.fileType == .directory else { return true }
        guard let path = path ?? procSelf.path(of: fd) else { return false }
        return path.suffix(Self.deletedSuffix.count).elementsEqual(Self.deletedSuffix)
    }

    /// The node's file handle; a deleted file nothing has open (`open` false) goes as lost, as in
    /// find-paths mode: another host's kernel would not open its handle (ESTALE) once the source lets it go.
    func fileHandle(of node: InodeData, rootMount: UInt64, open: Bool) -> Result<KernelFileHandle, MigrationError> {
        guard node.key.mountID == rootMount else {
            return .failure(MigrationError("it is on another mount than the shared directory (file handles name files of one mount)"))
        }
        if !open, (try? withPath(node) { (fd) throws(Errno) -> Bool in try hasNoName(node, fd, path: nil) }) == true {
            return .failure(MigrationError("its file has no name left under the shared directory", deleted: true))
        }
        if let held = node.handle { return .success(held) }
        return Result { () throws(Errno) -> KernelFileHandle in
            try withPath(node) { (fd) throws(Errno) -> KernelFileHandle in try fd.fileHandle() }
        }.mapError { MigrationError("no file handle: \($0)") }
    }

    /// Opens `path` (relative to the shared directory) a name at a time, `O_PATH | O_NOFOLLOW`: never through
    /// a symlink, never up through "..", whatever the bytes say.
    func open(relative path: [UInt8]) throws(Errno) -> OwnedFD {
        let names = path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        guard !names.isEmpty, path.count < Int(PATH_MAX) else { throw .invalidArgument }
        var current: OwnedFD? = nil
        for name in names {
            guard !name.isEmpty, name.count <= 255, !name.contains(0),
                  !(name.count == 1 && name[name.startIndex] == UInt8(ascii: ".")),
                  !(name.count == 2 && name.allSatisfy({ $0 == UInt8(ascii: ".") }))
            else { throw .invalidArgument }
            let cName = name.map { CChar(bitPattern: $0) } + [0]
            let parent = current?.borrowed ?? inodes.root.fd()
            // SAFETY: the name is a local NUL-terminated array, valid for the call.
            let raw = try unsafe cName.withUnsafeBufferPointer { (buffer) throws(Errno) -> CInt in
                try unsafe parent.open(buffer.baseAddress!, flags: [.path, .noFollow]).release()
            }
            current = OwnedFD(taking: raw)
        }
        return current.take()!
    }

    public func loadState(from reader: inout StateReader) throws(MigrationError) {
        let modeByte = try reader.u8()
        guard modeByte <= 1 else { throw MigrationError("unknown migration mode \(modeByte)") }
        let byHandle = modeByte == 1
        _ = try reader.u64()  // the source's root mount id: not needed here
        let nodeCount = try reader.count(minimumSize: Self.nodeRecordMinimum)
        var lost = 0
        for _ in 0..<nodeCount {
            let id = try reader.u64()
            let lookups = try reader.u64()
            let typeIndex = Int(try reader.u8())
            guard typeIndex < Self.fileTypes.count else { throw MigrationError("node \(id): file type \(typeIndex)") }
            let fileType = Self.fileTypes[typeIndex]
            let device = try reader.u64()
            let inode = try reader.u64()
            let found = try reader.u8()
            guard found <= 1 else { throw MigrationError("node \(id): bad found flag \(found)") }
            var restored: OwnedFD? = nil
            var restoredStat = FileStat(mode: 0)
            var key = InodeKey(device: 0, inode: 0, mountID: 0)
            var failure = "lost on the source"
            if found == 1 {
                var opened: OwnedFD? = nil
                if byHandle {
                    let type = try reader.i32()
                    _ = try reader.u64()
                    let bytes = try reader.data(limit: KernelFileHandle.maxByteCount)
                    do throws(MigrationError) { opened = try openByHandle(type: type, bytes: bytes) } catch { failure = error.description }
                } else {
                    let path = try reader.data(limit: Int(PATH_MAX))
                    do throws(Errno) { opened = try open(relative: path) } catch { failure = "its path: \(error)" }
                }
                // The file found must be of the node's type, and with verifyHandles the very file of the source.
                if let fd = opened.take() {
                    if let stat = try? unsafe fd.borrowed.statx(""), stat.fileType == fileType,
                       !options.migration.verifyHandles || (stat.device == device && stat.inode == inode) {
                        key = InodeKey(stat)
                        restoredStat = stat
                        restored = consume fd
                    } else {
                        failure = options.migration.verifyHandles
                            ? "the file found is not the source's (type, device or inode number differ)"
                            : "the file found is not of the node's type"
                    }
                }
            }
            if restored == nil {
                // A node the source sent as lost was its call (under abort, only a file nothing can reach again
                // but a FORGET): only a failure here is ours to judge.
                guard options.migration.onError == .guestError || found == 0 else {
                    throw MigrationError("node \(id): \(failure)")
                }
                logger.log(level: found == 0 ? .debug : .warning,
                    "migration: node \(id) is lost (its requests fail with EIO): \(failure)")
                lost += 1
            }
            do throws(Errno) {
                try inodes.restore(nodeID: id, lookups: lookups, key: key, fileType: fileType, fd: restored.take()) {
                    (fd) throws(Errno) -> NodeHolding in try holding(fd, restoredStat)
                }
            } catch {
                throw MigrationError("node \(id): \(error == .fileExists ? "its id is taken, or another node has its file" : "\(error)")")
            }
        }
        let handleCount = try reader.count(minimumSize: Self.handleRecordMinimum)
        var handlesLost = 0
        for _ in 0..<handleCount {
            let handle = try reader.u64()
            let nodeID = try reader.u64()
            let flags = try reader.i32()
            guard let node = inodes.get(nodeID), nodeID != 0 else {
                throw MigrationError("handle \(handle): node \(nodeID) is not in the state")
            }
            let accessMode = flags & O_ACCMODE
            guard accessMode != O_ACCMODE else { throw MigrationError("handle \(handle): access mode 3") }
            var open: OwnedFD? = nil
            do throws(Errno) {
                if options.readOnly && accessMode != O_RDONLY { throw .readOnlyFileSystem }
                if node.fileType == .directory {
                    open = try openDirectory(node)
                } else {
                    // Only what an OPEN could have given the host: no O_CREAT, O_TRUNC, O_PATH and the like.
                    let kept = O_ACCMODE | O_APPEND | O_NONBLOCK | CInt(0o40000) | CInt(0o1000000) | CInt(0o4010000)
                    open = try reopen(node, flags: hostOpenFlags(UInt32(bitPattern: flags & kept)))
                }
            } catch {
                guard options.migration.onError == .guestError else { throw MigrationError("handle \(handle): \(error)") }
                logger.warning("migration: handle \(handle) is not taken up (its requests fail with EBADF): \(error)")
                handlesLost += 1
                continue
            }
            do throws(Errno) {
                try handles.restore(
                    handle, fd: open.take()!, writer: accessMode != O_RDONLY && options.cache == .auto ? node : nil,
                    appending: flags & O_APPEND != 0 && !options.writeback)
            } catch {
                throw MigrationError("handle \(handle): its number is taken")
            }
        }
        logger.info("migration: took up \(nodeCount) nodes (\(lost) lost) and \(handleCount - handlesLost) of \(handleCount) handles")
    }

    /// Opens a file handle from the source on the shared directory's mount.
    func openByHandle(type: Int32, bytes: [UInt8]) throws(MigrationError) -> OwnedFD {
        guard let handle = KernelFileHandle(type: type, mountID: 0, bytes: bytes) else {
            throw MigrationError("a file handle of \(bytes.count) bytes")
        }
        do throws(Errno) {
            let mount = try openDirectory(inodes.root)
            return try mount.borrowed.open(handle: handle, flags: [.path, .noFollow])
        } catch {
            throw MigrationError("its file handle: \(error)")
        }
    }
}
